"""Compiling the attention kernels in a second process while this one compiles the others.

Numba compiles one function at a time in a process (a global compiler lock), on one core. A
first forward with an empty cache spent most of its time compiling (wgnet: ~60 % of it in
`_attention_block` and its callees, the rest in the matmul and convolution kernels), so when the
cache lacks them, the first fast-path model built in a process starts a helper process
(`start`) that compiles the matmul tiles and the fused attention kernel into the on-disk cache, in
float32, while this process goes on (reading the weights and the image, compiling the other
kernels). When the forward reaches one of the helper's kernels (`wait_for`), it waits for the
helper to report it and then loads it from the cache instead of compiling it.

The helper calls each kernel once on empty operands of the types the fast path passes
(`empty_calls`): the same specialisation as a forward's, nothing computed. It is a plain child
process, so nothing is shared but the cache folder; if it fails or is not there, the kernels
compile here as before. `REFPOSE_PRECOMPILE=0` in the environment switches the helper off.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys

import numpy as np

# In the helper's order: first the matmul tiles, which this process's first matmul item links
# (it waits for them, then loads them from the cache: ~3.4 s CPU it does not compile), then the
# fused attention block (~5 s with its callees). The unfused attention (`_layer_norm`,
# `_grouped_attention`), which only some configs use (tiny), compiles here when needed.
HELPER_KERNELS = ("_tiles", "_attention_block")

_helper: subprocess.Popen | None = None
_reported: dict[str, float] = {}       # the helper's kernels done: their compile's CPU seconds
_waited = [0.0]                        # seconds this process waited for the helper
_started = False


def empty_calls(dtype) -> dict:
    """For each kernel named in HELPER_KERNELS, a function that calls it once on empty operands of
    the types `refpose.ops.fast` passes for `dtype` (so it compiles or loads that specialisation)."""
    from . import kernels, simd

    dtype = np.dtype(dtype)
    L = simd.lanes(dtype)
    v = np.zeros(L, dtype)

    def m(*shape):
        return np.zeros(shape, dtype)
    pix = np.zeros((0, L), np.intp)
    zero, one, yes, no = kernels.ZERO, kernels.ONE, kernels.YES, kernels.NO
    return {
        # the operand tuples `_matmul_bias_act` passes (see there), for one row
        "_tiles": lambda: kernels._tiles(1, L, L, (m(L), zero, L, one), (m(L * L), zero, yes), (m(L), zero),
                                         (v, no, m(L), no), (zero, one)),
        "_attention_block": lambda: kernels.attention_block(m(0, L), pix, (v, v, dtype.type(1e-5)), (m(3 * L * L), m(3 * L)),
                                                            1, (m(L * L), v), m(0, L)),
    }


# Callees of the fused attention kernel that this process compiles first, before its forward
# (~2 s CPU), so that the helper, which reaches them after the tiles, loads them from the cache:
# the two sides then take about as long. If the helper gets there first, it compiles them
# itself: nothing is lost but that CPU time. (`_attend` calls the tiles, which this process
# would then compile too.)
EARLY_HERE = ("_transpose", "_norm_columns")


def _early_calls(dtype) -> dict:
    """Calls of the EARLY_HERE kernels on empty operands, with the types `_attention_block` passes."""
    from . import kernels

    dtype = np.dtype(dtype)
    m2, m1 = np.zeros((0, 0), dtype), np.zeros(0, dtype)
    return {"_transpose": lambda: kernels._transpose(m2, m2),
            "_norm_columns": lambda: kernels._norm_columns(m2, m1, m1, dtype.type(1e-5), m2)}


def _cached(name: str) -> bool:
    """Whether the cache has an index for kernel `name` (any specialisation: then it is not cold)."""
    from . import kernels

    cache = getattr(getattr(kernels, name), "_cache", None)
    index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
    return index is None or os.path.exists(index)


def start() -> None:
    """Start the helper once per process, if the cache is on disk and holds no attention kernel."""
    global _helper, _started
    if _started:
        return
    _started = True
    if os.environ.get("REFPOSE_PRECOMPILE", "1") == "0":
        return
    from . import kernels

    if not kernels.JIT["cache"] or all(_cached(name) for name in HELPER_KERNELS):
        return
    code = "from refpose.ops.precompile import _serve; _serve()"
    try:
        _helper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
    except OSError:
        _helper = None
        return
    atexit.register(_stop)
    for call in _early_calls(np.float32).values():
        call()


def wait_for(name: str, dtype) -> None:
    """Before this process first calls kernel `name` in `dtype`: if the helper compiles it, wait until
    it is in the cache."""
    global _helper
    if _helper is None or name in _reported or name not in HELPER_KERNELS or dtype != np.float32:
        return
    import time

    t = time.perf_counter()
    try:
        for line in _helper.stdout:
            done, _, seconds = line.partition(" ")
            _reported[done] = float(seconds or "nan")
            if done == name:
                return
        _helper.wait()                    # it ended without reporting `name`: compile it here
        _helper = None
    finally:
        _waited[0] += time.perf_counter() - t


def report() -> dict:
    """What the helper did in this process: whether it ran, its kernels' compile CPU seconds (the
    ones it reported so far), and the seconds this process waited for it."""
    return {"helper": _helper is not None or bool(_reported), "kernels": dict(_reported), "waited_s": _waited[0]}


def _stop() -> None:
    if _helper is not None and _helper.poll() is None:
        _helper.kill()
        _helper.wait()


def _serve() -> None:
    """The helper: compile the float32 kernels into the cache, one line per kernel done (its name and
    the compile's CPU seconds)."""
    import time
    import warnings

    warnings.simplefilter("ignore")
    for name, call in empty_calls(np.float32).items():
        t = time.thread_time()
        call()
        print(name, f"{time.thread_time() - t:.2f}", flush=True)
