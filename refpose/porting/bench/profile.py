"""`refpose bench --profile`: where the time goes, the fast path per op kind and per stage (by
wrapping the model's op set and stages, so nothing is timed when it is not asked for) and ONNX
Runtime's own per-node profile summed by op type."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import numpy as np

from ...config import get_config
from ...errors import RefposeError
from .candidates import FAST, ORT, _installed, bench_input, export_twin
from .environment import blas_info, check_args, fixed_threads, quiet_spinning
from .environment import wait_until_idle


def _tally(fn, sums: dict, calls: dict, key: str):
    """`fn` with its wall time added to sums[key] on every call."""
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sums[key] += time.perf_counter() - t
            calls[key] += 1
    return timed


def profile_fast(model, x: np.ndarray, runs: int, warmup: int = 2) -> dict:
    """Wall time of the fast path per op kind (the methods of the model's `Ops`) and per stage
    (stem, s1..s4, d1..d3, head), summed over `runs` forwards; ms per forward.

    The timers wrap this model instance's op set and stages, so an unprofiled model carries no
    cost. Op time includes the op's dispatch (shape checks, allocation of its output);
    "other" is what runs between the ops or the stages (input and output transposes).
    """
    from collections import defaultdict

    from ...model import TAPS
    from ...ops import Ops

    op_s, op_n, stage_s, stage_n = (defaultdict(float), defaultdict(int), defaultdict(float), defaultdict(int))
    for name in (n for n in vars(Ops) if not n.startswith("_") and callable(getattr(model.ops, n))):
        setattr(model.ops, name, _tally(getattr(model.ops, name), op_s, op_n, name))
    for stage in TAPS:
        layer = getattr(model, stage)
        layer.forward = _tally(layer.forward, stage_s, stage_n, stage)
    for _ in range(warmup):
        model(x)
    for d in (op_s, op_n, stage_s, stage_n):
        d.clear()
    total = 0.0
    for _ in range(runs):
        wait_until_idle()
        t = time.perf_counter()
        model(x)
        total += time.perf_counter() - t

    def table(sums, calls):
        rows = [{"name": k, "ms": 1e3 * v / runs, "calls": calls[k] // runs, "share": v / total}
                for k, v in sorted(sums.items(), key=lambda kv: -kv[1])]
        rest = total - sum(sums.values())
        return rows + [{"name": "other", "ms": 1e3 * rest / runs, "calls": 0, "share": rest / total}]
    return {"total_ms": 1e3 * total / runs, "by_op": table(op_s, op_n), "by_stage": table(stage_s, stage_n)}


def profile_ort(path: str, x: np.ndarray, threads: int, runs: int, warmup: int, workdir: str) -> dict:
    """ONNX Runtime's own profile of `runs` forwards (after `warmup`), node kernel times summed
    by op type; ms per forward."""
    import json
    from collections import defaultdict

    from ..runtimes import ort_session

    session = ort_session(path, threads, profile_prefix=os.path.join(workdir, "ort-profile"))
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    t0 = None
    for _ in range(runs):
        wait_until_idle()
        if t0 is None:
            t0 = time.perf_counter()
        session.run(None, {name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    model_runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = model_runs[warmup] if len(model_runs) > warmup else 0      # skip the warm-up runs' nodes
    sums, calls = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            sums[op] += e["dur"] / 1e3
            calls[op] += 1
    run_ms = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    total = float(np.sum(run_ms[warmup:])) / runs if len(run_ms) > warmup else sum(sums.values()) / runs
    rows = [{"name": k, "ms": v / runs, "calls": calls[k] // runs, "share": v / runs / total}
            for k, v in sorted(sums.items(), key=lambda kv: -kv[1])]
    rest = total - sum(r["ms"] for r in rows)
    return {"total_ms": total, "by_op": rows + [{"name": "other", "ms": rest, "calls": 0, "share": rest / total}]}


def run_profile(config="wgnet", batch: int = 1, threads: int = 2, runs: int = 20, seed: int = 0,
                warmup: int = 2, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Where the time goes: the fast path per op kind and per stage and, if installed, ONNX
    Runtime's per-node profile by op type, on the bench's weights and input."""
    check_args(batch, threads, runs)
    cfg = get_config(config)
    notes = quiet_spinning()
    from ...weights import from_tensors, init_weights

    tensors = init_weights(cfg, seed)
    x = bench_input(cfg, batch, seed)
    with fixed_threads(threads), tempfile.TemporaryDirectory(prefix="refpose-profile-") as workdir:
        progress(f"profiling {FAST}")
        fast = profile_fast(from_tensors(tensors, cfg, "float32", "fast"), x, runs, warmup)
        ort = None
        if not _installed("onnxruntime"):
            notes.append(f"{ORT}: not profiled (onnxruntime is not installed; pip install 'refpose[onnx]')")
        else:
            progress(f"profiling {ORT}")
            try:
                ort = profile_ort(export_twin(tensors, cfg, workdir), x, threads, runs, warmup, workdir)
            except ImportError as e:
                notes.append(f"{ORT}: not profiled (exporting the twin needs {e.name}; pip install 'refpose[onnx]')")
            except RefposeError as e:
                notes.append(f"{ORT}: not profiled ({e})")
    return {"config": cfg.name, "input": list(x.shape), "threads": threads, "runs": runs, "fast": fast, "ort": ort,
            "blas": blas_info(), "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY")},
            "notes": notes}
