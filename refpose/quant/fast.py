"""Fast path of the int8 ops: the functions of `refpose.quant.reference`, same names and results
(the same integers), on the Numba kernels of `refpose.quant.kernels`. The matmuls (1x1 convs,
linears, the transposed conv's taps, the head) run on the register tile of `refpose.quant.simd`
(vpdpbusd where the CPU has it, else vpmaddwd) on weights packed once per read-only weight array,
each tile requantized as it is done; the attention runs its two products on the same tiles inside a
kernel of its own; the depthwise conv, LayerNorm and the adds have kernels of their own. The SE's
pooling and gating, a few thousand values, stay on the reference's NumPy code, which is the
definition itself.
"""
from __future__ import annotations

import numpy as np

from ..ops.fast import _kept
from ..ops.geometry import conv_out_size, token_pixels
from . import kernels, simd
from .reference import gate, mean_pool  # noqa: F401  the same code on both paths: small


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _packed(w: np.ndarray) -> np.ndarray:
    """The weights (Cout, Cin[, 1, 1]) packed for the tiles, kept while the read-only weight lives
    (`_kept` is keyed by the array itself: pass the model's weight, not a view made per call)."""
    return _kept(w, "q" + ("vnni" if simd.VNNI else "wd"), lambda: kernels.pack_weights(w.reshape(len(w), -1)))


def _bias(w: np.ndarray, b: np.ndarray, zx) -> np.ndarray:
    """The bias as the tiles add it, padded to the packed columns: with vpdpbusd, the zero point's
    share zx * sum_k w[j, k] is taken off it (A holds the raw codes)."""
    rows = len(w)

    def make():
        out = np.zeros(kernels.padded(rows, simd.LANES), np.int32)
        out[:rows] = b
        if simd.VNNI:
            out[:rows] -= np.int32(zx) * w.reshape(rows, -1).astype(np.int32).sum(axis=1)
        return _frozen(out)
    return _kept(w, f"qbias{int(zx)}", make)


def _matmul(x2: np.ndarray, zx, w2: np.ndarray, b: np.ndarray, scale: tuple, out: np.ndarray) -> np.ndarray:
    """out (M, N) from the int32 sums (x - zx) w2^T + b for x2 (M, K) uint8, w2 (N, K[, 1, 1]) int8
    (a read-only array that lives as long as the model: what is packed from it is kept): uint8
    requantized with scale = (mult (N,), zero point, lo, hi), or float32 * mult for a float32 out."""
    M, K = x2.shape
    Mp, Kp = kernels.padded(M, simd.TILE_ROWS), kernels.padded(K, simd.GROUP)
    if simd.VNNI and (Mp, Kp) == (M, K) and x2.flags.c_contiguous:
        a = x2                                      # the codes as they are, already whole tiles
    else:
        a = np.empty((Mp, Kp), np.uint8 if simd.VNNI else np.int16)
        kernels.pack_rows(x2, np.int32(zx), a)
    kernels._matmul(a, Kp, _packed(w2), _bias(w2, b, zx), scale, out)
    return out


def _mult(m, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(m, np.float32), (n,)))


def conv(x, zx, w, bias, kind, stride, mult, zy, lo=0, hi=255) -> np.ndarray:
    """`reference.conv`: 1x1 convs (with a stride: every s-th pixel) and transposed convs on the
    tiles, requantized as each tile is done; depthwise convs on their kernel, requantized a row at a time."""
    N, H, W, Cin = x.shape
    zy, lo, hi = np.int32(zy), np.int32(lo), np.int32(hi)
    if kind == "depthwise":
        C, _, k, _ = w.shape
        Ho, Wo = conv_out_size(H, k, stride), conv_out_size(W, k, stride)
        wk = _kept(w, "qkkc", lambda: _frozen(np.ascontiguousarray(w[:, 0].transpose(1, 2, 0).astype(np.int32))))
        out = np.empty((N, Ho, Wo, C), np.uint8)
        kernels._depthwise(np.ascontiguousarray(x), np.int32(zx), wk, bias, stride, (_mult(mult, C), zy, lo, hi), out)
        return out
    if kind == "transposed":
        # the taps (co, a, b) as columns co k k + a k + b, each with its channel's bias and scale:
        # requantized taps, placed on the output (kernel == stride: each output pixel is one tap)
        _, Cout, k, _ = w.shape
        w2 = _kept(w, "qtaps", lambda: _frozen(np.ascontiguousarray(w.reshape(Cin, Cout * k * k).T)))   # (Cout k k, Cin)
        tap_bias = _kept(w, "qtapbias", lambda: _frozen(np.repeat(bias, k * k)))
        taps = np.empty((N * H * W, Cout * k * k), np.uint8)
        _matmul(np.ascontiguousarray(x).reshape(-1, Cin), zx, w2, tap_bias,
                (np.repeat(_mult(mult, Cout), k * k), zy, lo, hi), taps)
        out = np.empty((N, H * k, W * k, Cout), np.uint8)
        kernels._scatter_taps(taps.reshape(N, H, W, -1), Cout, k, out)
        return out
    Cout, k = w.shape[0], (w.shape[2] if w.ndim == 4 else 1)
    if k != 1:
        from .reference import conv as reference_conv
        return reference_conv(x, zx, w, bias, kind, stride, mult, zy, lo, hi)
    if stride != 1:
        x = x[:, ::stride, ::stride]
    _, Ho, Wo, _ = x.shape
    out = np.empty((N * Ho * Wo, Cout), np.uint8)
    _matmul(np.ascontiguousarray(x).reshape(-1, Cin), zx, w, bias, (_mult(mult, Cout), zy, lo, hi), out)
    return out.reshape(N, Ho, Wo, Cout)


def conv_float(x, zx, w, bias, out_mult) -> np.ndarray:
    """`reference.conv_float` (the head): the tiles, each scaled to float32(acc) * out_mult."""
    N, H, W, Cin = x.shape
    Cout = w.shape[0]
    out = np.empty((N * H * W, Cout), np.float32)
    zero = np.int32(0)
    _matmul(np.ascontiguousarray(x).reshape(-1, Cin), zx, w, bias, (_mult(out_mult, Cout), zero, zero, zero), out)
    return out.reshape(N, H, W, Cout)


def add(a, pa, b, pb, py) -> np.ndarray:
    out = np.empty(a.shape, np.uint8)
    kernels._add(np.ascontiguousarray(a).reshape(-1), np.float32(pa[0]), np.int32(pa[1]),
                 np.ascontiguousarray(b).reshape(-1), np.float32(pb[0]), np.int32(pb[1]),
                 np.float32(py[0]), np.int32(py[1]), out.reshape(-1))
    return out


def layer_norm(x, px, weight, bias, eps, py) -> np.ndarray:
    C = x.shape[-1]
    out = np.empty(x.shape, np.uint8)
    kernels._layer_norm(np.ascontiguousarray(x).reshape(-1, C), np.int32(px[1]), np.float32(px[0]),
                        _kept(weight, "f64", lambda: weight.astype(np.float64)),
                        _kept(bias, "f64", lambda: bias.astype(np.float64)), np.float64(eps),
                        np.float32(py[0]), np.int32(py[1]), out.reshape(-1, C))
    return out


def attention(qkv, z, heads, kind, window, patch, score_mult, score_zero, table, out_mult, out_zero) -> np.ndarray:
    N, H, W, C3 = qkv.shape
    C = C3 // 3
    pix = np.ascontiguousarray(token_pixels(N, H, W, kind, window, patch))
    out = np.empty((N * H * W, C), np.uint8)
    kernels._attention(np.ascontiguousarray(qkv).reshape(-1, C3), np.int32(z), pix, heads,
                       (np.float32(score_mult), np.int32(score_zero)), table, (np.float32(out_mult), np.int32(out_zero)),
                       out)
    return out.reshape(N, H, W, C)
