"""Thread policy: how refpose's Numba kernels and the BLAS under NumPy share the cores.

- OpenMP runtimes are asked to wait passively after a parallel region (OMP_WAIT_POLICY=PASSIVE,
  unless the user chose a policy). Numba's OpenMP threads spin by default, and so do OpenBLAS's
  workers after a matmul; the fast path alternates the two, and on a 2-core machine spinning
  pools starved each other (a wgnet forward took ~1.4 s instead of ~50 ms). An OpenMP runtime
  (libgomp) reads the variable once, when it loads, so it is set as early as refpose can: when
  the package is imported (this module is imported by `refpose/__init__.py`). A runtime that
  loads later (torch imported after refpose, Numba's first parallel launch) waits passively.
- Whether a runtime was already loaded at that moment (torch imported before refpose) is noted
  then; the policy is applied once per process, when the first fast-path model is built
  (`Ops("fast")` calls `policy()`): if a runtime spins, the kernels run on one Numba thread
  and one warning says so. Worker processes inherit the variable and so never warn.

Callers that fix thread counts (the benchmark, evaluation workers) go through
`kernel_threads` / `set_kernel_threads`, so they respect the same rule.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass

OPENMP_LIBS = ("libgomp", "libiomp", "libomp.")


@dataclass(frozen=True)
class ThreadPolicy:
    openmp_spins: bool        # an OpenMP runtime was loaded before it could be asked not to spin


def ask_openmp_not_to_spin() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set a policy; True when an OpenMP runtime
    was loaded before, without it (that runtime keeps spinning)."""
    if "OMP_WAIT_POLICY" in os.environ:             # a policy set by the user (or a parent) is kept
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return _openmp_loaded()


@functools.cache
def policy() -> ThreadPolicy:
    """The process's thread policy, applied on the first call (see the module docstring)."""
    if SPINNING_OPENMP_AT_IMPORT:
        import numba

        numba.set_num_threads(1)
        warnings.warn("an OpenMP runtime (torch's) was loaded before refpose, so it spins between parallel "
                      "regions; the fast path runs its Numba kernels on one thread. Import refpose before "
                      "torch, or set OMP_WAIT_POLICY=PASSIVE in the environment, to run them in parallel.",
                      RuntimeWarning, stacklevel=3)
    return ThreadPolicy(openmp_spins=SPINNING_OPENMP_AT_IMPORT)


def _openmp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            loaded = f.read()
    except OSError:                      # not Linux: nothing to check
        return False
    return any(lib in loaded for lib in OPENMP_LIBS)


SPINNING_OPENMP_AT_IMPORT = ask_openmp_not_to_spin()     # once, when refpose is imported


def kernel_threads(requested: int) -> int:
    """The Numba threads the kernels may use when `requested` are asked for."""
    import numba

    return 1 if policy().openmp_spins else max(1, min(requested, numba.config.NUMBA_NUM_THREADS))


def set_kernel_threads(requested: int) -> None:
    """Set the Numba threads of the calling thread, within the policy."""
    import numba

    numba.set_num_threads(kernel_threads(requested))


def single_threaded_blas():
    """A context in which BLAS runs on one thread.

    A BLAS matrix product can round differently with another number of threads (OpenBLAS
    float32: ~1e-6), so every process of an evaluation runs it on one: the poses are then the
    same for any number of workers. Without threadpoolctl BLAS keeps its threads, and that
    guarantee with it.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
