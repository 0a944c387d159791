"""`refpose bench --cold`: what a first run costs. A fresh interpreter with an empty Numba cache
imports refpose, builds the model and runs one forward (the kernels compile), then a second
fresh interpreter does the same on the cache the first one filled (the kernels load): the wall
time of each step, and the compile time of each kernel and specialisation.

Compile times come from Numba's compile events (`numba.core.event`, kind "numba:compile"): a
kernel's time is the CPU time of the compiling thread from its start event to its end event
(CPU time, not wall time: on a shared machine the wall time of a compile grows with the other
jobs' load), less the time of the kernels compiled inside it (its own callees, `_tiles` in
`_matmul_item`); what Numba compiles for its own library code (np.empty, min, ...) while
compiling a kernel is charged to that kernel. With an empty cache the matmul tiles and the
attention kernels compile in a helper process beside it (`refpose.ops.precompile`), which
reports their CPU time too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from numba.core import event

class Recorder(event.Listener):
    def __init__(self):
        self.events = []
    def on_start(self, ev):
        self.events.append((time.thread_time(), True, ev.data))
    def on_end(self, ev):
        self.events.append((time.thread_time(), False, ev.data))

rec = Recorder()
event.register("numba:compile", rec)
import numpy as np
import refpose
from refpose.config import get_config
from refpose.porting.bench.candidates import bench_input
from refpose.weights import from_tensors, init_weights
spec = json.loads(sys.argv[1])
t1 = time.perf_counter()
cfg = get_config(spec["config"])
model = from_tensors(init_weights(cfg, spec["seed"]), cfg, "float32", "fast")
x = bench_input(cfg, spec["batch"], spec["seed"])
t2 = time.perf_counter()
model(x)
t3 = time.perf_counter()
cpu = time.process_time()                     # this process's CPU time from its start through the first forward
model(x)
t4 = time.perf_counter()
kernels, stack = {}, []
for ts, start, data in rec.events:
    f = data["dispatcher"].py_func
    ours = f.__module__.startswith("refpose.")
    if start:
        stack.append([f.__name__ if ours else None, ts, 0.0, str(data["args"])])
        continue
    name, s, inner, args = stack.pop()
    if name is None:                      # Numba's own code compiled for a kernel: charged to that kernel
        continue
    own = ts - s - inner
    for frame in reversed(stack):
        if frame[0] is not None:
            frame[2] += ts - s            # an enclosing kernel does not count this one's time
            break
    row = kernels.setdefault((name, args), [0.0, 0])
    row[0] += own
    row[1] += 1
from refpose.ops import precompile
waited = precompile.report()["waited_s"]    # during the first forward
for name in precompile.HELPER_KERNELS:      # the helper's report of the kernels this forward did not need
    precompile.wait_for(name, np.float32)
helper = dict(precompile.report(), waited_s=waited)
print(json.dumps({"helper": helper, "cpu_through_first_forward_s": cpu, "import_s": t1 - t0, "build_s": t2 - t1, "first_forward_s": t3 - t2, "second_forward_s": t4 - t3,
                  "kernels": [{"kernel": k[0], "signature": k[1], "compile_s": v[0]} for k, v in kernels.items()]}))
"""


def _child(config: str, batch: int, seed: int, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"config": config, "batch": batch, "seed": seed})],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"the cold-start child failed (status {p.returncode}): {p.stderr.strip()[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["process_s"] = wall
    r["kernels"].sort(key=lambda k: -k["compile_s"])
    return r


def run_cold(config: str = "wgnet", batch: int = 1, seed: int = 0,
             progress: Callable[[str], None] = lambda s: None) -> dict:
    """The cold start (empty cache) and the warm start (the cache it filled), each in a fresh process."""
    from ...config import get_config
    from ...ops import simd

    cfg = get_config(config)
    with tempfile.TemporaryDirectory(prefix="refpose-cold-") as cache:
        progress("cold start: a fresh process, empty kernel cache")
        cold = _child(cfg.name, batch, seed, cache)
        progress("warm start: a fresh process, the cache the cold start filled")
        warm = _child(cfg.name, batch, seed, cache)
    return {"config": cfg.name, "batch": batch, "cold": cold, "warm": warm,
            "compile_s": sum(k["compile_s"] for k in cold["kernels"]),
            "vector_bits": 8 * simd.VECTOR_BYTES, "cpu_name": os.environ.get("NUMBA_CPU_NAME")}


def format_cold(r: dict) -> str:
    from tabulate import tabulate

    def steps(s):
        return (f"process {s['process_s']:.2f} s = import {s['import_s']:.2f} s + build {s['build_s']:.2f} s + first "
                f"forward {s['first_forward_s']:.2f} s (+ interpreter start and exit); second forward "
                f"{1e3 * s['second_forward_s']:.0f} ms; CPU time through the first forward "
                f"{s['cpu_through_first_forward_s']:.2f} s")
    rows = [[k["kernel"], f"{k['compile_s']:.2f}", f"{100 * k['compile_s'] / r['compile_s']:.0f} %",
             _short(k["signature"])] for k in r["cold"]["kernels"]]
    helper = r["cold"]["helper"]
    if helper["helper"]:
        helper_line = ("helper process (refpose.ops.precompile), compiled beside it, CPU seconds: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in helper["kernels"].items())
                       + f"; the first forward waited {helper['waited_s']:.2f} s for it")
    else:
        helper_line = "no helper process (REFPOSE_PRECOMPILE=0, or the cache was not empty)"
    return "\n".join([
        f"refpose bench --cold: config {r['config']}, batch {r['batch']}, float32 fast path, "
        f"{r['vector_bits']}-bit vectors" + (f" (NUMBA_CPU_NAME={r['cpu_name']})" if r["cpu_name"] else ""),
        "cold (empty cache): " + steps(r["cold"]),
        "warm (cache filled): " + steps(r["warm"]),
        helper_line,
        f"compile time by kernel in the process itself (CPU seconds of the compiling thread, less its callees' own; "
        f"{r['compile_s']:.2f} s in all):",
        tabulate(rows, headers=["kernel", "s", "share", "specialisation"], colalign=("left", "right", "right", "left"),
                 disable_numparse=True)])


def _short(sig: str) -> str:
    """A Numba signature, shortened: Array(float32, 2, 'C', False, aligned=True) -> f32[2d]."""
    import re

    sig = re.sub(r"Array\((\w+), (\d), 'C', False, aligned=True\)", lambda m: f"{m[1].replace('float', 'f').replace('int', 'i')}[{m[2]}d]", sig)
    return sig if len(sig) <= 120 else sig[:117] + "..."
