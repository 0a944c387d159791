"""Latency of refpose against the frameworks a user would otherwise pick (DESIGN section 5).

Candidates, on the same seeded weights and the same input, in one process:
- `refpose numpy`: the NumPy reference path (`impl="reference"`), float32;
- `refpose fast`: the fast path (Numba kernels, no BLAS call), float32;
- `pytorch eager`: the PyTorch twin (`refpose.porting.twin`) under `torch.inference_mode()`, if torch is installed;
- `onnxruntime`: the twin exported to ONNX (`refpose.porting.onnx_export`), if onnxruntime is installed;
- `openvino`: the same ONNX file on OpenVINO's CPU plugin (latency hint, one stream, f32, no
  thread pinning), if openvino is installed.

Fair timing:
- every library runs `threads` threads (Numba, the BLAS under NumPy via threadpoolctl, torch
  intra-op, ORT intra-op) and its inter-op pool one;
- pools that keep spinning after a call steal cores from whatever runs next: ORT's spinning is
  switched off in the session options and OpenMP's by OMP_WAIT_POLICY=PASSIVE (read when the
  runtime loads, see `quiet_spinning`); OpenVINO's threads are not pinned to cores; OpenBLAS, loaded with NumPy before any of this, spins
  ~0.1 s after a call, so every timed call waits until the process is idle (`wait_until_idle`);
- candidates alternate inside each round, so drift in the machine's load hits all alike, and
  the rounds' orders follow a Williams design (`balanced_orders`): over its rows, every
  candidate runs right after every other one equally often. A call can leave a cost to the
  next one that waiting does not remove (on the test machine the first fast-path forward
  after a two-thread sgemm took 1.3-1.6x its usual time, even a second later); with the order
  only rotated, each candidate always had the same predecessor. Warm-up runs are not timed;
  medians over the rounds;
- the yardstick, numpy float32 matmul (sgemm) throughput, is timed as one more candidate of
  every round; the BLAS library in use is reported (threadpoolctl);
- `aa=True` times the fast path against a second copy of itself: the ratio must read 1.00 +- 0.05.
Outputs are checked against the float64 NumPy reference, at the oracle's float32 tolerance
(`refpose.porting.oracle.TOLERANCES`: 1e-4 x max |ref|).

Memory: the peak resident set (VmHWM in /proc/<pid>/status) of a child process that builds one
candidate and runs two forwards, and how much of it the forwards added to the resident set
the built candidate had (`peak_rss`); one child per candidate, so no candidate's memory (or
allocator cache) is counted against another.

`run_profile` (`refpose bench --profile`) times the fast path per op kind and per stage (by
wrapping the model's op set and stages, so nothing is timed when it is not asked for) and
sums ONNX Runtime's own per-node profile by op type.
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

from ..config import get_config
from ..counting import count_ops
from ..errors import BenchError, RefposeError
from .oracle import TOLERANCES

FAST = "refpose fast"
FAST_COPY = "refpose fast (copy)"
NUMPY = "refpose numpy"
TORCH = "pytorch eager"
ORT = "onnxruntime"
OPENVINO = "openvino"
SGEMM = "sgemm"
SGEMM_N = 512              # a square float32 matmul big enough to run BLAS near its peak
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
    from ..threads import policy

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

    from ..threads import set_kernel_threads

    before = numba.get_num_threads()
    set_kernel_threads(threads)                       # one thread for the kernels if OpenMP spins
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
    from ..weights import from_tensors

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


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def export_twin(tensors, cfg, workdir: str) -> str:
    """The twin exported to ONNX once, for every runtime that reads it; returns the path."""
    from .onnx_export import export_onnx

    path = os.path.join(workdir, f"{cfg.name}.onnx")
    export_onnx(tensors, cfg, path, opset=17)
    return path


def ort_candidate(path: str, x: np.ndarray, threads: int) -> Candidate:
    from .runtimes import ort_session

    session, setup = _timed(lambda: ort_session(path, threads))
    name = session.get_inputs()[0].name
    return Candidate(ORT, lambda: session.run(None, {name: x})[0], setup)


def openvino_candidate(path: str, x: np.ndarray, threads: int) -> Candidate:
    """OpenVINO's CPU plugin on the ONNX file: latency hint, one stream, `threads` threads,
    f32 inference, no pinning of threads to cores (pinned threads would fight the other
    candidates' threads for the same cores)."""
    from .runtimes import openvino_compile

    def make():
        return openvino_compile(path, threads).create_infer_request()

    request, setup = _timed(make)

    def forward():
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()
    return Candidate(OPENVINO, forward, setup)


def optional_candidates(tensors, cfg, x, threads, workdir, progress) -> tuple[list[Candidate], list[str], str | None]:
    """PyTorch eager, ONNX Runtime and OpenVINO where installed; a note for each one skipped,
    and the path of the ONNX export (None if nothing needed it or it failed)."""
    cands, skipped = [], []
    if not _installed("torch"):
        skipped.append(f"{TORCH}: skipped (torch is not installed; pip install 'refpose[torch]')")
    else:
        progress(f"building {TORCH}")
        cands.append(torch_candidate(tensors, cfg, x, threads))
    runtimes = [(ORT, "onnxruntime", "onnx", ort_candidate), (OPENVINO, "openvino", "openvino", openvino_candidate)]
    wanted = []
    for name, module, extra, make in runtimes:
        if not _installed(module):
            skipped.append(f"{name}: skipped ({module} is not installed; pip install 'refpose[{extra}]')")
        else:
            wanted.append((name, make))
    path = None
    if wanted:
        progress("exporting the twin to ONNX")
        try:
            path = export_twin(tensors, cfg, workdir)
        except ImportError as e:
            skipped += [f"{name}: skipped (exporting the twin needs {e.name}; pip install 'refpose[onnx]')"
                        for name, _ in wanted]
            wanted = []
        except RefposeError as e:
            skipped += [f"{name}: skipped ({e})" for name, _ in wanted]
            wanted = []
    for name, make in wanted:
        progress(f"building {name}")
        cands.append(make(path, x, threads))
    return cands, skipped, path


def sgemm_candidate(n: int = SGEMM_N, seed: int = 0) -> Candidate:
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    return Candidate(SGEMM, lambda: a @ b)


# --- memory --------------------------------------------------------------------------------------
MEMORY_PROBE = """
import json, sys
from refpose.porting.bench import candidate_peak_rss
print(json.dumps(candidate_peak_rss(*json.loads(sys.argv[1]))))
"""


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: the peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def bench_input(cfg, batch: int, seed: int) -> np.ndarray:
    H, W = cfg.input_size
    return np.random.default_rng(seed + 1).standard_normal((batch, 3, H, W)).astype(np.float32)


def candidate_peak_rss(name: str, config: str, batch: int, threads: int, seed: int,
                       onnx_path: str | None) -> dict:
    """Run in a child process: build candidate `name`, run two forwards; the peak resident set
    of the process (MB) and how much the forwards added to what the built candidate held."""
    from ..weights import init_weights

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
                t = time.perf_counter()
                c.forward()
                c.times.append(time.perf_counter() - t)
    finally:
        if gc_was_enabled:
            gc.enable()
    return busy


def _kernel_cache_stats() -> tuple[int, int]:
    import numba

    from ..ops import kernels

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
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Time the candidates in one run; returns a JSON-ready dict (see `format_result`).

    `optional=False` leaves out PyTorch, ONNX Runtime and OpenVINO; `aa=True` times the fast path
    against a copy of itself (and the yardstick) only; `memory` measures each candidate's peak
    RSS in a child process after the timing.
    """
    check_args(batch, threads, runs)
    cfg = get_config(config)
    notes = quiet_spinning()
    import numba

    from ..weights import from_tensors, init_weights

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
        if aa:
            cands = [fast, refpose_candidate(FAST_COPY, tensors, cfg, x, "fast")]
        else:
            cands = [fast, refpose_candidate(NUMPY, tensors, cfg, x, "reference")]
            if optional:
                extra, skipped, onnx_path = optional_candidates(tensors, cfg, x, threads, workdir, progress)
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
        rss = {}
        if memory and not aa:
            rss, more = measure_memory([c.name for c in cands], cfg.name, batch, threads, seed, onnx_path, progress)
            notes += more
    result = _result(cfg, x.shape, threads, runs, warmup, aa, cands, sgemm, counter.macs, diffs, cache, blas,
                     layer, notes, skipped)
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

    from ..ops import simd

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
                     "agrees": diffs[c.name] <= TOLERANCES["float32"], "setup_s": c.setup_s, "first_run_s": c.first_s})
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


def format_result(r: dict) -> str:
    """The table `refpose bench` prints."""
    from tabulate import tabulate

    from ..ops.kernels import PANEL

    N, _, H, W = r["input"]
    lines = [f"refpose bench: config {r['config']}, input {N}x3x{H}x{W}, {r['threads']} thread(s), "
             f"{r['runs']} rounds (candidates alternate, in balanced orders)"]
    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    rows = [[c["name"], f"{c['median_ms']:.1f}", f"{c['min_ms']:.1f}", f"{c['ratio']:.2f}",
             "-" if c is r["candidates"][0] else "{:.2f}-{:.2f}".format(*c["ratio_interval"]),
             f"{c['gmacs_per_s']:.1f}", f"{100 * c['of_sgemm']:.0f} %",
             mb(c.get("peak_rss_mb")), mb(c.get("forward_rss_mb")),
             f"{c['max_rel_diff']:.1e}" + ("" if c["agrees"] else "  DISAGREES")] for c in r["candidates"]]
    lines.append(tabulate(rows, headers=["candidate", "median ms", "min ms", "x fast", "95 % interval", "GMAC/s",
                                         "of sgemm", "peak RSS MB", "fwd +MB", "max |diff| / max |ref|"],
                          colalign=("left",) + ("right",) * 9, disable_numparse=True))
    by_name = {c["name"]: c["median_ms"] for c in r["candidates"]}
    vs = [f"{a} / {b} = {by_name[a] / by_name[b]:.2f}" for a in (FAST, NUMPY) for b in (TORCH, ORT, OPENVINO)
          if a in by_name and b in by_name]
    if vs:
        lines.append("median latency ratios: " + ", ".join(vs))
    s = r["sgemm"]
    lines.append(f"yardstick: numpy sgemm {s['n']}^3 float32 {s['median_ms']:.2f} ms = {s['gmacs_per_s']:.0f} GMAC/s "
                 f"({s['gflops']:.0f} GFLOP/s), same run")
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']}, "
                     f"{b['num_threads']} threads)" for b in r["blas"]) or "unknown (threadpoolctl not installed)"
    tile = r["fast_path"]
    lines.append(f"BLAS: {blas}; Numba {r['numba']['version']}, threading layer {r['numba']['threading_layer']}; "
                 f"fast-path matmul tiles of {tile['tile_rows']} rows x {PANEL} vectors of "
                 f"{tile['vector_bits']} bits")
    cache = r["kernel_cache"]
    how = ("compiled" if cache["misses"] else "loaded from the on-disk cache" if cache["hits"]
           else "already loaded in this process")
    lines.append(f"first run of {FAST}: {r['fast_first_run_s']:.2f} s (kernels {how}: "
                 f"{cache['hits']} cache hits, {cache['misses']} misses)")
    lines.append(f"timing: {r['warmup']} untimed warm-up runs each; every timed call starts with the process idle "
                 f"(spinning pools waited out); OMP_WAIT_POLICY={r['env']['OMP_WAIT_POLICY']}; "
                 "ONNX Runtime spinning off; OpenVINO threads not pinned")
    if any(c.get("peak_rss_mb") is not None for c in r["candidates"]):
        lines.append("peak RSS: VmHWM of a child process that built only that candidate and ran two forwards; "
                     "fwd +MB: what the forwards added to the built candidate's resident set")
    lines.append(f"MACs per forward {r['macs']:,} (counted; 1 FLOP = 1 MAC as in the paper); max |diff| is against "
                 f"the float64 NumPy reference, bound {r['agree_bound']:g}")
    lines.append("95 % interval: bootstrap over the rounds (both candidates of a round resampled together) "
                 "of the ratio of medians; on a shared machine it is the run's own noise")
    if r["aa"]:
        verdict = "fair" if r["aa_fair"] else "NOT within"
        lo, hi = r["aa_interval"]
        noisy = "" if r["aa_fair"] or not lo <= 1 <= hi else "; the interval holds 1.00: this run was too noisy to tell"
        lines.append(f"A/A: {FAST_COPY} / {FAST} = {r['aa_ratio']:.3f} ({verdict} 1.00 +- {AA_BAND:.2f}; "
                     f"95 % interval {lo:.3f}-{hi:.3f}{noisy})")
    lines += [f"note: {n}" for n in r["skipped"] + r["notes"]]
    return "\n".join(lines)


# --- profile -------------------------------------------------------------------------------------
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

    from ..model import TAPS
    from ..ops import Ops

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

    from .runtimes import ort_session

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
    from ..weights import from_tensors, init_weights

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


def format_profile(r: dict) -> str:
    """The tables `refpose bench --profile` prints."""
    from tabulate import tabulate

    N, _, H, W = r["input"]

    def table(rows, what):
        return tabulate([[x["name"], f"{x['ms']:.1f}", f"{100 * x['share']:.0f} %", x["calls"] or ""] for x in rows],
                        headers=[what, "ms / forward", "share", "calls"], colalign=("left", "right", "right", "right"),
                        disable_numparse=True)
    fast = r["fast"]
    lines = [f"refpose bench --profile: config {r['config']}, input {N}x3x{H}x{W}, {r['threads']} thread(s), "
             f"{r['runs']} forwards after warm-up; wall time, ms per forward",
             f"{FAST}: {fast['total_ms']:.1f} ms per forward (mean)", table(fast["by_op"], "op kind"), "",
             table(fast["by_stage"], "stage")]
    if r["ort"]:
        lines += ["", f"{ORT} (its own profiler, node kernel time by op type): {r['ort']['total_ms']:.1f} ms per "
                  "forward (mean of its model_run events)", table(r["ort"]["by_op"], "op type")]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in r["blas"]) or "unknown"
    lines.append(f"BLAS: {blas}; OPENBLAS_CORETYPE={r['env']['OPENBLAS_CORETYPE']}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
