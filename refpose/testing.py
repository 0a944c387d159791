"""pytest helpers for projects that port WGNet to another backend and check it against refpose.

    from refpose.testing import make_inputs, reference_outputs, assert_matches_reference

    x = make_inputs("wgnet", n=2, seed=0)                 # float32-exact, as float64
    ref = reference_outputs("wgnet.safetensors", x)       # every tap, float64
    out = my_backend(x.astype(np.float32))                # heatmaps, or {tap: array}
    assert_matches_reference(out, ref, dtype="float32")

Outputs are the heatmaps alone or a dict keyed by tap names (`stem, s1..s4, d1..d3`, and
`heatmaps` or `head` for the output). On failure the AssertionError names the first tap
beyond the tolerance and the index where its error is largest. Tolerances are stated and
justified per dtype in `refpose.porting.oracle` (float32 1e-4, float64 2e-13, relative to max|ref|).
Golden files written by `refpose oracle dump` are read with `load_golden`.
"""
from __future__ import annotations

import numpy as np

from .porting.oracle import TOLERANCES, Golden, compare, make_inputs, reference_taps, tolerance
from .porting.oracle import load_dump as load_golden

__all__ = ["TOLERANCES", "Golden", "make_inputs", "reference_outputs", "assert_matches_reference",
           "load_golden", "tolerance"]


def reference_outputs(weights, inputs: np.ndarray, config=None) -> dict[str, np.ndarray]:
    """refpose float64 taps (stem, s1..s4, d1..d3, head) for `weights` (a weights file, or a
    dict of arrays with `config`) on `inputs` (N, 3, H, W)."""
    return reference_taps(weights, inputs, config)


def assert_matches_reference(outputs, reference: "dict[str, np.ndarray] | Golden",
                             rtol: float | None = None, dtype="float32") -> None:
    """Assert that a backend's outputs agree with the reference within the tolerance of `dtype`
    (or `rtol`, as max|got - ref| / max|ref|). On failure, name the first diverging tap."""
    if isinstance(reference, Golden):
        reference = reference.taps
    result = compare(outputs, reference, tolerance(dtype) if rtol is None else rtol)
    if not result.passed:
        raise AssertionError("backend differs from refpose float64:\n" + "\n".join(result.lines()))
