"""Peak memory of each candidate, measured in a child process of its own: the peak resident set
(VmHWM in /proc/<pid>/status) of a process that builds one candidate and runs two forwards, and
what the forwards added to the built candidate's resident set."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ...config import get_config
from .candidates import FAST, NUMPY, ORT, TORCH, bench_input, openvino_candidate, ort_candidate, refpose_candidate, torch_candidate
from .environment import fixed_threads


MEMORY_PROBE = """
import json, sys
from refpose.porting.bench.memory import candidate_peak_rss
print(json.dumps(candidate_peak_rss(*json.loads(sys.argv[1]))))
"""


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: the peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def candidate_peak_rss(name: str, config: str, batch: int, threads: int, seed: int,
                       onnx_path: str | None) -> dict:
    """Run in a child process: build candidate `name`, run two forwards; the peak resident set
    of the process (MB) and how much the forwards added to what the built candidate held."""
    from ...weights import init_weights

    cfg = get_config(config)
    tensors = init_weights(cfg, seed)
    x = bench_input(cfg, batch, seed)
    with fixed_threads(threads):
        if name in (FAST, NUMPY):
            c = refpose_candidate(name, tensors, cfg, x, "fast" if name == FAST else "reference")
        elif name == TORCH:
            c = torch_candidate(tensors, cfg, x, threads)
        elif name == ORT:
            c = ort_candidate(onnx_path, x, threads)
        else:
            c = openvino_candidate(onnx_path, x, threads)
        built = _status_kb("VmRSS")
        c.forward()
        c.forward()
        peak = _status_kb("VmHWM")
    return {"peak_rss_mb": peak / 1024, "forward_rss_mb": (peak - built) / 1024}


def measure_memory(names, config: str, batch: int, threads: int, seed: int, onnx_path: str | None,
                   progress: Callable[[str], None] = lambda s: None) -> tuple[dict, list[str]]:
    """`candidate_peak_rss` of each candidate, each in a child process of its own."""
    import json
    import subprocess

    found, notes = {}, []
    for name in names:
        progress(f"peak memory of {name}")
        args = json.dumps([name, config, batch, threads, seed, onnx_path])
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, args], capture_output=True, text=True,
                           env=dict(os.environ))
        try:
            found[name] = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            err = (r.stderr.strip().splitlines() or ["no output"])[-1]
            notes.append(f"peak memory of {name} not measured: {err}")
    return found, notes
