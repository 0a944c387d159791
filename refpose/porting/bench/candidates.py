"""The candidates the bench times, each one forward on the same weights and input: refpose's two
paths, PyTorch eager, ONNX Runtime and OpenVINO on the twin's ONNX export, and the sgemm yardstick."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import RefposeError


FAST = "refpose fast"


FAST_COPY = "refpose fast (copy)"


NUMPY = "refpose numpy"


TORCH = "pytorch eager"


ORT = "onnxruntime"


OPENVINO = "openvino"


SGEMM = "sgemm"


# `refpose bench --torch-first`: the fast path in child processes (`worker.py`)
NO_TORCH = "refpose fast, no torch"
TORCH_FIRST = "refpose fast, torch first, torch fwd before each"
TORCH_IDLE = "refpose fast, torch first, torch idle"


SGEMM_N = 512              # a square float32 matmul big enough to run BLAS near its peak


@dataclass
class Candidate:
    name: str
    forward: Callable[[], np.ndarray]         # one forward on the bench input -> heatmaps (N, K, h, w)
    setup_s: float = 0.0                      # building / exporting / loading it
    first_s: float = 0.0                      # its first forward (compiling or loading kernels)
    times: list = field(default_factory=list)
    reference: np.ndarray | None = None       # what its output is checked against (None: the float64 reference)
    bound: float | None = None                # ... and within what, as max|diff| / max|ref| (None: float32's)
    timed: Callable[[], float] | None = None  # runs one forward and returns its own time (a child process's)
    close: Callable[[], None] = lambda: None
    worker: object = None                     # the child process behind it (`worker.Worker`), if any


def _timed(make):
    t = time.perf_counter()
    out = make()
    return out, time.perf_counter() - t


def refpose_candidate(name: str, tensors, cfg, x: np.ndarray, impl: str) -> Candidate:
    from ...weights import from_tensors

    model, setup = _timed(lambda: from_tensors(tensors, cfg, "float32", impl))
    return Candidate(name, lambda: model(x), setup)


def torch_candidate(tensors, cfg, x: np.ndarray, threads: int) -> Candidate:
    import torch

    from ..twin import WGNetTwin

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
    from ..onnx_export import export_onnx

    path = os.path.join(workdir, f"{cfg.name}.onnx")
    export_onnx(tensors, cfg, path, opset=17)
    return path


def ort_candidate(path: str, x: np.ndarray, threads: int) -> Candidate:
    from ..runtimes import ort_session

    session, setup = _timed(lambda: ort_session(path, threads))
    name = session.get_inputs()[0].name
    return Candidate(ORT, lambda: session.run(None, {name: x})[0], setup)


def openvino_candidate(path: str, x: np.ndarray, threads: int) -> Candidate:
    """OpenVINO's CPU plugin on the ONNX file: latency hint, one stream, `threads` threads,
    f32 inference, no pinning of threads to cores (pinned threads would fight the other
    candidates' threads for the same cores)."""
    from ..runtimes import openvino_compile

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


def bench_input(cfg, batch: int, seed: int) -> np.ndarray:
    H, W = cfg.input_size
    return np.random.default_rng(seed + 1).standard_normal((batch, 3, H, W)).astype(np.float32)
