"""Timing in rounds: candidates alternate in balanced orders, every call starts with the process
idle, medians and a bootstrap interval of their ratio; `run_bench` is the whole run."""
from __future__ import annotations

import gc
import os
import tempfile
import time
from typing import Callable

import numpy as np

from ...config import get_config
from ...counting import count_ops
from ..oracle import TOLERANCES
from .candidates import (FAST, FAST_COPY, NUMPY, SGEMM_N, Candidate, _timed, bench_input, optional_candidates,
                         refpose_candidate, sgemm_candidate)
from .environment import blas_info, check_args, fixed_threads, quiet_spinning, wait_until_idle
from .memory import measure_memory
from .worker import worker_candidates


AA_BAND = 0.05             # an A/A ratio within 1 +- AA_BAND reads as fair


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n candidates in which each one follows every other one equally often (a Williams
    design, balanced for first-order carry-over: Williams 1949): the first order is
    0, 1, n-1, 2, n-2, ..., the next ones add 1, 2, ... (mod n); for odd n the reversed orders
    follow, as n orders alone cannot balance. n orders for even n, 2n for odd n."""
    first = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]
    orders = [[(c + i) % n for c in first] for i in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def time_rounds(cands: list[Candidate], runs: int, warmup: int = 2,
                progress: Callable[[str], None] = lambda s: None, idle: bool = True) -> int:
    """Warm up, then `runs` rounds; round r runs the candidates in order r of
    `balanced_orders` (cyclically).

    With `idle`, every call starts once the process is idle again (`wait_until_idle`).
    Returns how many of those waits timed out.
    """
    for c in cands:
        for _ in range(warmup):
            c.forward()
    orders = balanced_orders(len(cands))
    busy = 0
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()          # a collection inside one candidate's forward would be charged to it
    try:
        for r in range(runs):
            progress(f"round {r + 1}/{runs}")
            for i in orders[r % len(orders)]:
                c = cands[i]
                if idle and not wait_until_idle():
                    busy += 1
                if c.timed is not None:            # a child process: its own time of its forward
                    c.times.append(c.timed())
                    continue
                t = time.perf_counter()
                c.forward()
                c.times.append(time.perf_counter() - t)
    finally:
        if gc_was_enabled:
            gc.enable()
    return busy


def _kernel_cache_stats() -> tuple[int, int]:
    import numba

    from ...ops import kernels

    hits = misses = 0
    for f in vars(kernels).values():
        if isinstance(f, numba.core.registry.CPUDispatcher):
            hits += sum(f.stats.cache_hits.values())
            misses += sum(f.stats.cache_misses.values())
    return hits, misses


def rel_diff(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def run_bench(config="wgnet", batch: int = 1, threads: int = 2, runs: int = 20, aa: bool = False,
              seed: int = 0, warmup: int = 2, optional: bool = True, memory: bool = True,
              progress: Callable[[str], None] = lambda s: None, torch_first: bool = False,
              numpy: bool = True, int8: bool = False) -> dict:
    """Time the candidates in one run; returns a JSON-ready dict (see `format_result`).

    `optional=False` leaves out PyTorch, ONNX Runtime and OpenVINO; `aa=True` times the fast path
    against a copy of itself (and the yardstick) only; `memory` measures each candidate's peak
    RSS in a child process after the timing; `numpy=False` leaves out the NumPy path;
    `torch_first=True` times the fast path in child processes that imported torch before refpose
    against one that did not (`worker_candidates`; the first of them, without torch, is the base of
    the ratios); `int8` adds the int8 candidates (`refpose.porting.bench.int8`), whose memory is not
    measured.
    """
    check_args(batch, threads, runs)
    cfg = get_config(config)
    notes = quiet_spinning()
    import numba

    from ...weights import from_tensors, init_weights

    tensors = init_weights(cfg, seed)
    x = bench_input(cfg, batch, seed)
    skipped: list[str] = []
    onnx_path = None
    with fixed_threads(threads), tempfile.TemporaryDirectory(prefix="refpose-bench-") as workdir:
        progress(f"building {FAST}")
        fast = refpose_candidate(FAST, tensors, cfg, x, "fast")
        before = _kernel_cache_stats()
        _, fast.first_s = _timed(fast.forward)
        after = _kernel_cache_stats()
        cache = {"hits": after[0] - before[0], "misses": after[1] - before[1]}
        if torch_first:
            cands = worker_candidates(cfg.name, batch, threads, seed, progress)
            cands[0].first_s = fast.first_s          # the bench's own process: the children warmed up on its cache
        elif aa:
            cands = [fast, refpose_candidate(FAST_COPY, tensors, cfg, x, "fast")]
        else:
            cands = [fast] + ([refpose_candidate(NUMPY, tensors, cfg, x, "reference")] if numpy else [])
            if optional:
                extra, skipped, onnx_path = optional_candidates(tensors, cfg, x, threads, workdir, progress)
                cands += extra
            if int8:
                from .int8 import int8_candidates

                extra, more = int8_candidates(tensors, cfg, x, threads, workdir, progress)
                cands += extra
                skipped += more
        for c in cands[1:]:
            _, c.first_s = _timed(c.forward)
        progress("checking the outputs against the float64 reference")
        ref = from_tensors(tensors, cfg, "float64", "reference")(x)
        with count_ops() as counter:
            fast.forward()
        sgemm = sgemm_candidate(seed=seed)
        try:
            busy = time_rounds(cands + [sgemm], runs, warmup, progress)
            diffs = {c.name: rel_diff(c.forward(), ref if c.reference is None else c.reference) for c in cands}
            if torch_first:
                w = cands[1].worker
                notes.append(f"{cands[1].name}: torch's own forward took {1e3 * float(np.median(w.before_s)):.1f} ms "
                             "(median) in that process; every child times its own forward, after waiting until it is idle "
                             "(the torch forward runs after that wait, right before refpose's)")
        finally:
            for c in cands:
                c.close()
        if busy:
            notes.append(f"the process was still busy after 0.5 s before {busy} of the timed calls "
                         "(a thread pool that does not go to sleep, or another load on the machine)")
        blas = blas_info()
        layer = numba.threading_layer()
        rss = {}
        if memory and not aa and not torch_first:
            rss, more = measure_memory([c.name for c in cands if c.reference is None], cfg.name, batch, threads, seed,
                                       onnx_path, progress)
            notes += more
    result = _result(cfg, x.shape, threads, runs, warmup, aa, cands, sgemm, counter.macs, diffs, cache, blas,
                     layer, notes, skipped)
    result["torch_first"] = torch_first
    if torch_first:
        result["workers"] = {c.name: c.worker.state for c in cands}
    for row in result["candidates"]:
        row.update(rss.get(row["name"], {"peak_rss_mb": None, "forward_rss_mb": None}))
    return result


def ratio_interval(num: list[float], den: list[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval (percentile, `level`) for median(num) / median(den), where num[i] and
    den[i] were timed in the same round: rounds are resampled whole, so a slow stretch of the
    machine weighs on both candidates alike. On a shared machine the median of 20 forwards can
    move by several percent from run to run; this says by how much in this run."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))
    ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _result(cfg, shape, threads, runs, warmup, aa, cands, sgemm, macs, diffs, cache, blas, layer, notes,
            skipped) -> dict:
    import numba

    from ...ops import simd

    fast_median = float(np.median(cands[0].times))
    sgemm_median = float(np.median(sgemm.times))
    sgemm_macs_per_s = SGEMM_N ** 3 / sgemm_median
    rows = []
    for c in cands:
        med = float(np.median(c.times))
        rows.append({"name": c.name, "median_ms": 1e3 * med, "min_ms": 1e3 * float(np.min(c.times)),
                     "ratio": med / fast_median, "ratio_interval": ratio_interval(c.times, cands[0].times),
                     "gmacs_per_s": macs / med / 1e9,
                     "of_sgemm": macs / med / sgemm_macs_per_s, "max_rel_diff": diffs[c.name],
                     "agrees": diffs[c.name] <= (TOLERANCES["float32"] if c.bound is None else c.bound),
                     "bound": TOLERANCES["float32"] if c.bound is None else c.bound,
                     "setup_s": c.setup_s, "first_run_s": c.first_s})
    result = {
        "config": cfg.name, "input": list(shape), "batch": shape[0], "threads": threads, "runs": runs, "warmup": warmup,
        "aa": aa, "macs": macs, "candidates": rows,
        "sgemm": {"n": SGEMM_N, "median_ms": 1e3 * sgemm_median, "gmacs_per_s": sgemm_macs_per_s / 1e9,
                  "gflops": 2 * sgemm_macs_per_s / 1e9},
        "blas": blas, "numba": {"version": numba.__version__, "threading_layer": layer, "threads": threads},
        "fast_path": {"vector_bits": 8 * simd.VECTOR_BYTES, "tile_rows": simd.TILE_ROWS},
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
                                               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "fast_first_run_s": cands[0].first_s, "kernel_cache": cache,
        "skipped": skipped, "notes": notes, "agree_bound": TOLERANCES["float32"],
    }
    if aa:
        result["aa_ratio"] = rows[1]["ratio"]
        result["aa_interval"] = rows[1]["ratio_interval"]
        result["aa_fair"] = abs(rows[1]["ratio"] - 1) <= AA_BAND
    return result
