"""Latency of refpose against the frameworks a user would otherwise pick (DESIGN section 5).

Candidates, on the same seeded weights and the same input, in one process:
- `refpose numpy`: the NumPy reference path (`impl="reference"`), float32;
- `refpose fast`: the fast path (BLAS + Numba kernels), float32;
- `pytorch eager`: the PyTorch twin (`refpose.twin`) under `torch.inference_mode()`, if torch is installed;
- `onnxruntime`: the twin exported to ONNX (`refpose.onnx_export`), if onnxruntime is installed.

Fair timing:
- every library runs `threads` threads (Numba, the BLAS under NumPy via threadpoolctl, torch
  intra-op, ORT intra-op) and its inter-op pool one;
- pools that keep spinning after a call steal cores from whatever runs next: ORT's spinning is
  switched off in the session options and OpenMP's by OMP_WAIT_POLICY=PASSIVE (read when the
  runtime loads, see `quiet_spinning`); OpenBLAS, loaded with NumPy before any of this, spins
  ~0.1 s after a call, so every timed call waits until the process is idle (`wait_until_idle`);
- candidates alternate inside each round and the order rotates from round to round, so drift
  in the machine's load hits all alike; warm-up runs are not timed; medians over the rounds;
- the yardstick, numpy float32 matmul (sgemm) throughput, is timed as one more candidate of
  every round; the BLAS library in use is reported (threadpoolctl);
- `aa=True` times the fast path against a second copy of itself: the ratio must read 1.00 +- 0.05.
Outputs are checked against the float64 NumPy reference (bound: 1e-4 x max |ref|).
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .config import get_config
from .counting import count_ops
from .errors import BenchError, RefposeError

FAST = "refpose fast"
FAST_COPY = "refpose fast (copy)"
NUMPY = "refpose numpy"
TORCH = "pytorch eager"
ORT = "onnxruntime"
SGEMM = "sgemm"
SGEMM_N = 512              # a square float32 matmul big enough to run BLAS near its peak
AGREE = 1e-4               # max |out - ref| <= AGREE * max |ref| (issue 4)
AA_BAND = 0.05             # an A/A ratio within 1 +- AA_BAND reads as fair


@dataclass
class Candidate:
    name: str
    forward: Callable[[], np.ndarray]         # one forward on the bench input -> heatmaps (N, K, h, w)
    setup_s: float = 0.0                      # building / exporting / loading it
    first_s: float = 0.0                      # its first forward (compiling or loading kernels)
    times: list = field(default_factory=list)


def quiet_spinning() -> list[str]:
    """Apply refpose's thread policy (`refpose.threads`: OpenMP runtimes asked not to spin) before
    any candidate runs; returns a note if an OpenMP runtime was loaded already and spins."""
    from .threads import policy

    if policy().openmp_spins:
        return ["an OpenMP runtime was loaded before the bench started and keeps its default spin "
                "(refpose's kernels run on one thread); set OMP_WAIT_POLICY=PASSIVE in the environment"]
    return []


def _threadpool_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return threadpool_info()


def blas_info() -> list[dict]:
    """NumPy's BLAS as threadpoolctl sees it: internal_api, version, architecture, threads.

    Other packages (OpenCV, SciPy) may load BLAS libraries of their own; the one shipped with
    NumPy is picked by its path when it can be told apart, otherwise all are listed.
    """
    libs = [lib for lib in _threadpool_info() if lib.get("user_api") == "blas"]
    numpy_libs = [lib for lib in libs if "numpy" in os.path.basename(os.path.dirname(lib.get("filepath", "")))]
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")}
            for lib in numpy_libs or libs]


@contextlib.contextmanager
def fixed_threads(threads: int):
    """Numba, BLAS and torch each at `threads` threads for the block; restored after."""
    import numba

    from .threads import kernel_threads

    before = numba.get_num_threads()
    numba.set_num_threads(kernel_threads(threads))    # one thread for the kernels if OpenMP spins
    torch_before = None
    try:
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            torch_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=threads, user_api="blas")
        with limits:
            yield
    finally:
        numba.set_num_threads(before)
        if torch_before is not None:
            sys.modules["torch"].set_num_threads(torch_before)


def check_args(batch: int, threads: int, runs: int) -> None:
    import numba

    if threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise BenchError(f"--threads {threads}: Numba runs at most {numba.config.NUMBA_NUM_THREADS} "
                         "threads on this machine (NUMBA_NUM_THREADS)")
    if runs < 1:
        raise BenchError(f"--runs must be at least 1, got {runs}")
    if batch < 1:
        raise BenchError(f"--batch must be at least 1, got {batch}")


# --- candidates ----------------------------------------------------------------------------------
def _timed(make):
    t = time.perf_counter()
    out = make()
    return out, time.perf_counter() - t


def refpose_candidate(name: str, tensors, cfg, x: np.ndarray, impl: str) -> Candidate:
    from .weights import from_tensors

    model, setup = _timed(lambda: from_tensors(tensors, cfg, "float32", impl))
    return Candidate(name, lambda: model(x), setup)


def torch_candidate(tensors, cfg, x: np.ndarray, threads: int) -> Candidate:
    import torch

    from .twin import WGNetTwin

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):      # allowed once per process, before any parallel work
        torch.set_num_interop_threads(1)

    def make():
        m = WGNetTwin(cfg).eval()
        m.load_numpy(tensors)
        return m

    model, setup = _timed(make)
    xt = torch.from_numpy(x)

    def forward():
        with torch.inference_mode():
            return model(xt).numpy()
    return Candidate(TORCH, forward, setup)


def ort_candidate(tensors, cfg, x: np.ndarray, threads: int, workdir: str) -> Candidate:
    import onnxruntime as ort

    from .onnx_export import export_onnx

    def make():
        path = os.path.join(workdir, f"{cfg.name}.onnx")
        export_onnx(tensors, cfg, path, opset=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    session, setup = _timed(make)
    name = session.get_inputs()[0].name
    return Candidate(ORT, lambda: session.run(None, {name: x})[0], setup)


def optional_candidates(tensors, cfg, x, threads, workdir, progress) -> tuple[list[Candidate], list[str]]:
    """PyTorch eager and ONNX Runtime where installed; a note for each one skipped."""
    cands, skipped = [], []
    try:
        import torch  # noqa: F401
    except ImportError:
        skipped.append(f"{TORCH}: skipped (torch is not installed; pip install 'refpose[torch]')")
    else:
        progress(f"building {TORCH}")
        cands.append(torch_candidate(tensors, cfg, x, threads))
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        skipped.append(f"{ORT}: skipped (onnxruntime is not installed; pip install 'refpose[onnx]')")
    else:
        progress(f"exporting the twin for {ORT}")
        try:
            cands.append(ort_candidate(tensors, cfg, x, threads, workdir))
        except ImportError as e:
            skipped.append(f"{ORT}: skipped (exporting the twin needs {e.name}; pip install 'refpose[onnx]')")
        except RefposeError as e:
            skipped.append(f"{ORT}: skipped ({e})")
    return cands, skipped


def sgemm_candidate(n: int = SGEMM_N, seed: int = 0) -> Candidate:
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    return Candidate(SGEMM, lambda: a @ b)


# --- timing --------------------------------------------------------------------------------------
def wait_until_idle(window: float = 0.012, timeout: float = 0.5) -> bool:
    """Sleep until this process's threads have used (almost) no CPU for `window` seconds.

    A pool that keeps spinning after a call (OpenBLAS's workers spin ~0.1 s by default, and
    only an environment variable read at load time changes that) shows up as CPU time while
    the main thread sleeps; waiting it out keeps it from stealing a core from the next
    candidate. Returns False if the process was still busy after `timeout`.
    """
    deadline = time.perf_counter() + timeout
    cpu = time.process_time()
    while time.perf_counter() < deadline:
        time.sleep(window)
        now = time.process_time()
        if now - cpu < 0.25 * window:        # less than a quarter of one core over the window
            return True
        cpu = now
    return False


def time_rounds(cands: list[Candidate], runs: int, warmup: int = 2,
                progress: Callable[[str], None] = lambda s: None, idle: bool = True) -> int:
    """Warm up, then `runs` rounds; round r runs the candidates in the order rotated by r.

    With `idle`, every call starts once the process is idle again (`wait_until_idle`).
    Returns how many of those waits timed out.
    """
    for c in cands:
        for _ in range(warmup):
            c.forward()
    n = len(cands)
    busy = 0
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()          # a collection inside one candidate's forward would be charged to it
    try:
        for r in range(runs):
            progress(f"round {r + 1}/{runs}")
            for i in range(n):
                c = cands[(r + i) % n]
                if idle and not wait_until_idle():
                    busy += 1
                t = time.perf_counter()
                c.forward()
                c.times.append(time.perf_counter() - t)
    finally:
        if gc_was_enabled:
            gc.enable()
    return busy


def _kernel_cache_stats() -> tuple[int, int]:
    import numba

    from .ops import kernels

    hits = misses = 0
    for f in vars(kernels).values():
        if isinstance(f, numba.core.registry.CPUDispatcher):
            hits += sum(f.stats.cache_hits.values())
            misses += sum(f.stats.cache_misses.values())
    return hits, misses


def rel_diff(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def run_bench(config="wgnet", batch: int = 1, threads: int = 2, runs: int = 20, aa: bool = False,
              seed: int = 0, warmup: int = 2, optional: bool = True,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Time the candidates in one run; returns a JSON-ready dict (see `format_result`).

    `optional=False` leaves out PyTorch and ONNX Runtime; `aa=True` times the fast path against
    a copy of itself (and the yardstick) only.
    """
    check_args(batch, threads, runs)
    cfg = get_config(config)
    notes = quiet_spinning()
    import numba

    from .weights import from_tensors, init_weights

    H, W = cfg.input_size
    tensors = init_weights(cfg, seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, 3, H, W)).astype(np.float32)
    skipped: list[str] = []
    with fixed_threads(threads), tempfile.TemporaryDirectory(prefix="refpose-bench-") as workdir:
        progress(f"building {FAST}")
        fast = refpose_candidate(FAST, tensors, cfg, x, "fast")
        before = _kernel_cache_stats()
        _, fast.first_s = _timed(fast.forward)
        after = _kernel_cache_stats()
        cache = {"hits": after[0] - before[0], "misses": after[1] - before[1]}
        if aa:
            cands = [fast, refpose_candidate(FAST_COPY, tensors, cfg, x, "fast")]
        else:
            cands = [fast, refpose_candidate(NUMPY, tensors, cfg, x, "reference")]
            if optional:
                extra, skipped = optional_candidates(tensors, cfg, x, threads, workdir, progress)
                cands += extra
        for c in cands[1:]:
            _, c.first_s = _timed(c.forward)
        progress("checking the outputs against the float64 reference")
        ref = from_tensors(tensors, cfg, "float64", "reference")(x)
        with count_ops() as counter:
            fast.forward()
        sgemm = sgemm_candidate(seed=seed)
        busy = time_rounds(cands + [sgemm], runs, warmup, progress)
        if busy:
            notes.append(f"the process was still busy after 0.5 s before {busy} of the timed calls "
                         "(a thread pool that does not go to sleep, or another load on the machine)")
        diffs = {c.name: rel_diff(c.forward(), ref) for c in cands}
        blas = blas_info()
        layer = numba.threading_layer()
    return _result(cfg, x.shape, threads, runs, warmup, aa, cands, sgemm, counter.macs, diffs, cache, blas,
                   layer, notes, skipped)


def _result(cfg, shape, threads, runs, warmup, aa, cands, sgemm, macs, diffs, cache, blas, layer, notes,
            skipped) -> dict:
    import numba

    fast_median = float(np.median(cands[0].times))
    sgemm_median = float(np.median(sgemm.times))
    sgemm_macs_per_s = SGEMM_N ** 3 / sgemm_median
    rows = []
    for c in cands:
        med = float(np.median(c.times))
        rows.append({"name": c.name, "median_ms": 1e3 * med, "min_ms": 1e3 * float(np.min(c.times)),
                     "ratio": med / fast_median, "gmacs_per_s": macs / med / 1e9,
                     "of_sgemm": macs / med / sgemm_macs_per_s, "max_rel_diff": diffs[c.name],
                     "agrees": diffs[c.name] <= AGREE, "setup_s": c.setup_s, "first_run_s": c.first_s})
    result = {
        "config": cfg.name, "input": list(shape), "batch": shape[0], "threads": threads, "runs": runs, "warmup": warmup,
        "aa": aa, "macs": macs, "candidates": rows,
        "sgemm": {"n": SGEMM_N, "median_ms": 1e3 * sgemm_median, "gmacs_per_s": sgemm_macs_per_s / 1e9,
                  "gflops": 2 * sgemm_macs_per_s / 1e9},
        "blas": blas, "numba": {"version": numba.__version__, "threading_layer": layer, "threads": threads},
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
                                               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "fast_first_run_s": cands[0].first_s, "kernel_cache": cache,
        "skipped": skipped, "notes": notes, "agree_bound": AGREE,
    }
    if aa:
        result["aa_ratio"] = rows[1]["ratio"]
        result["aa_fair"] = abs(rows[1]["ratio"] - 1) <= AA_BAND
    return result


def format_result(r: dict) -> str:
    """The table `refpose bench` prints."""
    from tabulate import tabulate

    N, _, H, W = r["input"]
    lines = [f"refpose bench: config {r['config']}, input {N}x3x{H}x{W}, {r['threads']} thread(s), "
             f"{r['runs']} rounds (candidates alternate, order rotated each round)"]
    rows = [[c["name"], f"{c['median_ms']:.1f}", f"{c['min_ms']:.1f}", f"{c['ratio']:.2f}",
             f"{c['gmacs_per_s']:.1f}", f"{100 * c['of_sgemm']:.0f} %",
             f"{c['max_rel_diff']:.1e}" + ("" if c["agrees"] else "  DISAGREES")] for c in r["candidates"]]
    lines.append(tabulate(rows, headers=["candidate", "median ms", "min ms", "x fast", "GMAC/s", "of sgemm",
                                         "max |diff| / max |ref|"],
                          colalign=("left",) + ("right",) * 6, disable_numparse=True))
    by_name = {c["name"]: c["median_ms"] for c in r["candidates"]}
    vs = [f"{a} / {b} = {by_name[a] / by_name[b]:.2f}" for a in (FAST, NUMPY) for b in (TORCH, ORT)
          if a in by_name and b in by_name]
    if vs:
        lines.append("median latency ratios: " + ", ".join(vs))
    s = r["sgemm"]
    lines.append(f"yardstick: numpy sgemm {s['n']}^3 float32 {s['median_ms']:.2f} ms = {s['gmacs_per_s']:.0f} GMAC/s "
                 f"({s['gflops']:.0f} GFLOP/s), same run")
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']}, "
                     f"{b['num_threads']} threads)" for b in r["blas"]) or "unknown (threadpoolctl not installed)"
    lines.append(f"BLAS: {blas}; Numba {r['numba']['version']}, threading layer {r['numba']['threading_layer']}")
    cache = r["kernel_cache"]
    how = ("compiled" if cache["misses"] else "loaded from the on-disk cache" if cache["hits"]
           else "already loaded in this process")
    lines.append(f"first run of {FAST}: {r['fast_first_run_s']:.2f} s (kernels {how}: "
                 f"{cache['hits']} cache hits, {cache['misses']} misses)")
    lines.append(f"timing: {r['warmup']} untimed warm-up runs each; every timed call starts with the process idle "
                 f"(spinning pools waited out); OMP_WAIT_POLICY={r['env']['OMP_WAIT_POLICY']}; "
                 "ONNX Runtime spinning off")
    lines.append(f"MACs per forward {r['macs']:,} (counted; 1 FLOP = 1 MAC as in the paper); max |diff| is against "
                 f"the float64 NumPy reference, bound {r['agree_bound']:g}")
    if r["aa"]:
        verdict = "fair" if r["aa_fair"] else "NOT within"
        lines.append(f"A/A: {FAST_COPY} / {FAST} = {r['aa_ratio']:.3f} ({verdict} 1.00 +- {AA_BAND:.2f})")
    lines += [f"note: {n}" for n in r["skipped"] + r["notes"]]
    return "\n".join(lines)
