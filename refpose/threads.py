"""Thread policy: how refpose's Numba kernels share the cores with other thread pools.

- OpenMP runtimes are asked to wait passively after a parallel region (OMP_WAIT_POLICY=PASSIVE,
  unless the user chose a policy): a pool that spins after its region takes a core from whatever
  runs next. An OpenMP runtime (libgomp) reads the variable once, when it loads, so it is set as
  early as refpose can: when the package is imported (this module is imported by
  `refpose/__init__.py`). A runtime that loads later (torch imported after refpose, the one
  under Numba's pool) waits passively.
- An OpenMP runtime loaded before refpose (torch imported first: its own copy of libgomp) kept
  the default policy and spins. Numba's OpenMP pool would run on it too: the dynamic linker
  binds the pool's OpenMP calls to the first libgomp loaded, whatever library the pool asked
  for, and then Numba's worker thread spins for milliseconds after each of the ~80 parallel
  regions of a forward (measured: a wgnet forward 2.1-2.2x as long as without torch on a
  loaded 2-core machine). So, when the first fast-path model is built (`Ops("fast")` calls
  `policy()`), Numba's pool is started with its OpenMP calls bound to the libgomp it links
  (RTLD_DEEPBIND), which loads after refpose and so waits passively. The kernels keep every
  thread; nothing is printed. Only if Numba's pool was already running on the spinning
  runtime (Numba's parallel code ran before refpose built a model) do the kernels run on one
  thread, with one warning.

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
    one_thread: bool = False  # Numba's pool runs on that runtime: the kernels get one thread


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
    if not SPINNING_OPENMP_AT_IMPORT or _start_numba_pool_on_its_own_runtime():
        return ThreadPolicy(openmp_spins=SPINNING_OPENMP_AT_IMPORT)
    import numba

    numba.set_num_threads(1)
    warnings.warn("Numba's thread pool runs on an OpenMP runtime that was loaded before refpose and spins between "
                  "parallel regions; the fast path runs its Numba kernels on one thread. Import refpose first, or "
                  "set OMP_WAIT_POLICY=PASSIVE in the environment, to run them in parallel.",
                  RuntimeWarning, stacklevel=3)
    return ThreadPolicy(openmp_spins=True, one_thread=True)


def _start_numba_pool_on_its_own_runtime() -> bool:
    """Start Numba's thread pool with its OpenMP calls bound to the libgomp it links, not to one
    loaded earlier (RTLD_DEEPBIND while the pool's module loads). False when the pool was
    started already, or cannot be started that way (no RTLD_DEEPBIND: not glibc)."""
    import sys

    from numba.np.ufunc import parallel

    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if parallel._is_initialized:
        return parallel.threading_layer() != "omp"        # TBB or Numba's workqueue: they sleep when idle
    if deepbind is None:
        return False
    loaded = _openmp_paths()
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        parallel._launch_threads()
    finally:
        sys.setdlopenflags(flags)
    # a runtime of its own loaded now, after refpose, so it waits passively; if the pool's libgomp
    # is the very file loaded before refpose (loaded by hand, not torch's copy), the pool spins
    return parallel.threading_layer() != "omp" or bool(_openmp_paths() - loaded)


def _openmp_paths() -> set[str]:
    """The files of the OpenMP runtimes loaded in this process (none known when not on Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:                      # not Linux: nothing to check
        return set()
    return {p for p in paths if any(lib in os.path.basename(p) for lib in OPENMP_LIBS)}


def _openmp_loaded() -> bool:
    return bool(_openmp_paths())


USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")     # as the user (or a parent process) set it, or None
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

    return 1 if policy().one_thread else max(1, min(requested, numba.config.NUMBA_NUM_THREADS))


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
