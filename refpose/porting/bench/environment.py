"""The process the bench runs in: thread counts fixed for every library, OpenMP asked not to spin,
the BLAS under NumPy as threadpoolctl sees it, and the arguments checked."""
from __future__ import annotations

import contextlib
import os
import sys
import time

from ...errors import BenchError


def quiet_spinning() -> list[str]:
    """Apply refpose's thread policy (`refpose.threads`: OpenMP runtimes asked not to spin) before
    any candidate runs; returns a note if an OpenMP runtime was loaded already and spins."""
    from ...threads import policy

    if policy().one_thread:
        return ["Numba's thread pool runs on an OpenMP runtime that was loaded before the bench started and keeps "
                "its default spin (refpose's kernels run on one thread); set OMP_WAIT_POLICY=PASSIVE in the environment"]
    if policy().openmp_spins:
        return ["an OpenMP runtime (torch's) was loaded before refpose and spins after its own parallel regions; "
                "Numba's pool runs on a runtime of its own, which waits passively"]
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

    from ...threads import set_kernel_threads

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
