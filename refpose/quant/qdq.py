"""Integer semantics, defined once: ONNX's QuantizeLinear / DequantizeLinear and the requantisation
of an int32 accumulator. The NumPy reference and the fast path both compute exactly these float32
(or float64) operations in this order, so the same integers come out of both.

- `quantize_linear(x, scale, zero_point)`: y = saturate(round(x / scale) + zero_point), the
  division in float32, rounding half to even, saturation to [0, 255] (uint8) or [-128, 127]
  (int8), as ONNX QuantizeLinear (opset 13).
- `dequantize_linear(q, scale, zero_point)`: (float32(q) - float32(zero_point)) * scale in float32,
  as ONNX DequantizeLinear.
- Integer products are accumulated in int32 (the sums of WGNet's layers stay below 2^26 in
  magnitude: 1152 terms of at most 255 x 127).
- `requantize(acc, multiplier, zero_point)`: the next activation's 8 bits from an int32
  accumulator: saturate(round(float32(acc) * multiplier) + zero_point), the product in float32
  and one rounding, half to even; `multiplier` = float32(s_in * s_w / s_out), computed in float64
  from the float32 scales and rounded once (`multiplier`). This is ONNX QLinearConv / QLinearMatMul's
  `round(acc * (x_scale * w_scale / y_scale))` with its scale product stated to the bit.

Scales must be positive, finite float32; zero points lie in the range of their type. NaN and
infinity are refused where a float tensor enters the integer domain (`check_finite`).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputShapeError, WeightsError

RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
WEIGHT_RANGE = (-127, 127)            # int8 weights, symmetric: -128 is never used (as ONNX Runtime)
SOFTMAX_SCALE = np.float32(1 / 255)   # softmax and sigmoid outputs: uint8 over [0, 1], scale 1/255, zero point 0


def check_finite(x: np.ndarray, what: str = "input") -> None:
    """InputShapeError if a float tensor about to be quantized holds NaN or infinity: neither has
    an integer code, and saturating them would hide the fault."""
    if not np.isfinite(x).all():
        raise InputShapeError(f"the {what} holds NaN or infinity, which have no int8 code")


def check_scale(scale, what: str = "scale") -> np.ndarray:
    """The scale as float32, or WeightsError if any entry is zero, negative, NaN or infinite."""
    s = np.asarray(scale, dtype=np.float32)
    if not (np.isfinite(s).all() and (s > 0).all()):
        bad = s[~(np.isfinite(s) & (s > 0))].reshape(-1)[0]
        raise WeightsError(f"{what} must be positive and finite, got {float(bad)}")
    return s


def quantize_linear(x: np.ndarray, scale, zero_point, dtype=np.uint8) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round(x / scale) + zero_point), x / scale in float32, ties to even."""
    dtype = np.dtype(dtype)
    lo, hi = RANGES[dtype]
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, lo, hi).astype(dtype)


def dequantize_linear(q: np.ndarray, scale, zero_point=0) -> np.ndarray:
    """ONNX DequantizeLinear: (float32(q) - float32(zero_point)) * scale, in float32."""
    return (np.asarray(q).astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def multiplier(*factors, divide_by) -> np.ndarray:
    """float32(prod(factors) / divide_by), the products and the quotient in float64 from the float32
    values, rounded once to float32: the requantisation multiplier of an accumulator."""
    m = np.float64(1.0)
    for f in factors:
        m = m * np.asarray(f, dtype=np.float32).astype(np.float64)
    return (m / np.asarray(divide_by, dtype=np.float32).astype(np.float64)).astype(np.float32)


def requantize(acc: np.ndarray, mult, zero_point, lo: int = 0, hi: int = 255) -> np.ndarray:
    """uint8 of an int32 accumulator: clip(round(float32(acc) * mult) + zero_point, lo, hi), the
    product in float32, ties to even. `lo`/`hi` narrower than [0, 255] apply a clipping activation
    exactly (see `relu6_bounds`)."""
    v = np.rint(np.asarray(acc, dtype=np.int32).astype(np.float32) * np.asarray(mult, dtype=np.float32))
    return np.clip(v + np.float32(zero_point), lo, hi).astype(np.uint8)


def relu6_bounds(scale, zero_point) -> tuple[int, int]:
    """[q(0), q(6)] for an output quantized with (scale, zero_point): a ReLU6 before the quantization
    is exactly a clamp of the codes to this range (rounding and clipping are both monotone)."""
    z = int(zero_point)
    six = int(quantize_linear(np.float32(6.0), scale, zero_point))
    return min(max(z, 0), 255), six


def quantize_weights(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights, symmetric per output channel (along `axis`), as ONNX Runtime's static
    quantization: scale = max|w| / 127 (1 for an all-zero channel), q = saturate(round(w / scale))
    in [-127, 127]. Returns (q int8, scale float32 of shape (channels,))."""
    w = np.asarray(w, dtype=np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    absmax = np.abs(w).max(axis=other) if other else np.abs(w)
    scale = np.where(absmax > 0, absmax.astype(np.float64) / WEIGHT_RANGE[1], 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), *WEIGHT_RANGE).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, input_scale, weight_scale: np.ndarray) -> np.ndarray:
    """int32 bias with scale input_scale * weight_scale (float32 product), zero point 0: ONNX
    Runtime's bias quantization, so that it adds to the accumulator as it is."""
    s = np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)
    q = np.rint(np.asarray(b, dtype=np.float32) / s)
    return np.clip(q, -2 ** 31, 2 ** 31 - 1).astype(np.int32)


def params_from_range(rmin: float, rmax: float) -> tuple[np.float32, np.uint8]:
    """(scale, zero_point) of uint8 covering [rmin, rmax] widened to hold 0 (so that zero, the
    padding and the ReLU floor, is exact): scale = (rmax - rmin) / 255, zero_point = round(-rmin /
    scale), as ONNX Runtime's `compute_scale_zp` for asymmetric uint8. An empty range gives scale 1."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmax == rmin:
        return np.float32(1.0), np.uint8(0)
    scale = np.float32((rmax - rmin) / 255.0)
    zero = int(np.clip(np.rint(-rmin / np.float64(scale)), 0, 255))
    return scale, np.uint8(zero)
