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
    if NUMBA_THREADS_PROBLEM:
        warnings.warn(NUMBA_THREADS_PROBLEM + "; it is ignored", RuntimeWarning, stacklevel=3)
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

# Numba's thread pool crashed (SIGSEGV) with NUMBA_NUM_THREADS=100000 on a 2-core machine; no
# machine refpose runs on has more cores than this
MAX_NUMBA_THREADS = 1024


def _numba_threads_problem() -> str | None:
    """What is wrong with NUMBA_NUM_THREADS, or None. Numba reads it when it is imported and fails
    only at the first parallel kernel (0: a ValueError traceback) or prints a traceback of its own
    and goes on (not a number); a bad value is therefore taken out of the environment here, before
    Numba is imported, and reported by `environment_problem`."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is None:
        return None
    if not text.strip():                   # set but empty: unset, as for most variables (Numba would complain)
        del os.environ["NUMBA_NUM_THREADS"]
        return None
    try:
        n = int(text.strip())
    except ValueError:
        n = None
    if n is not None and 1 <= n <= MAX_NUMBA_THREADS:
        return None
    del os.environ["NUMBA_NUM_THREADS"]
    import sys

    default = getattr(sys.modules.get("numba.core.config"), "NUMBA_DEFAULT_NUM_THREADS", None)
    if default is not None:                # Numba was imported first and read the value: use its default
        sys.modules["numba.core.config"].NUMBA_NUM_THREADS = default
    return (f"NUMBA_NUM_THREADS={text!r} in the environment: expected a whole number of threads between 1 "
            f"and {MAX_NUMBA_THREADS} (or leave it unset: one per core)")


NUMBA_THREADS_PROBLEM = _numba_threads_problem()          # once, when refpose is imported, before Numba is


def environment_problem() -> str | None:
    """What is wrong with the environment variables refpose's kernels read, or None: the command
    line refuses to run with it (one line, status 2); a program that imports refpose gets one
    warning, and Numba's default thread count."""
    return NUMBA_THREADS_PROBLEM


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset and container limits set it;
    else every core of the machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):         # not Linux
        return max(1, os.cpu_count() or 1)


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
