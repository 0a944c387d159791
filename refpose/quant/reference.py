"""The int8 oracle's ops: plain NumPy, written from the integer semantics of `refpose.quant.qdq`.

Maps are NHWC uint8 codes with a per-tensor zero point; weights are int8 in PyTorch layouts,
biases int32 in the accumulator's scale. Every product is summed exactly (int32 or int64); the
few float steps (requantisation, LayerNorm's normalisation, the add of two tensors, the tables of
softmax and sigmoid) are elementwise float32/float64 operations in a fixed order, so that
`refpose.quant.fast` reproduces them bit for bit. These functions do not count ops.
"""
from __future__ import annotations

import numpy as np

from ..ops.geometry import conv_out_size, partition, reverse
from .qdq import SOFTMAX_SCALE, dequantize_linear, quantize_linear, requantize

EXP_ONE = 1 << 24          # softmax numerators in fixed point: exp(0) = 2^24


def _centred(x: np.ndarray, zero_point) -> np.ndarray:
    return x.astype(np.int32) - np.int32(zero_point)


def conv_acc(x: np.ndarray, zx, w: np.ndarray, bias: np.ndarray, kind: str, stride: int = 1) -> np.ndarray:
    """int32 accumulator of a quantized conv: bias[co] + sum (x - zx) * w over the taps; zero
    padding k//2 (a padded tap holds the code zx, i.e. 0.0). kind: "conv" (dense, w (Cout, Cin,
    k, k)), "depthwise" (w (C, 1, k, k)) or "transposed" (kernel == stride, w (Cin, Cout, k, k))."""
    if w.ndim == 2:                                               # a linear layer (out, in): a 1x1 conv
        w = w[:, :, None, None]
    xc = _centred(x, zx)                                          # (N, H, W, Cin)
    N, H, W, Cin = x.shape
    if kind == "transposed":
        _, Cout, k, _ = w.shape
        t = xc.reshape(-1, Cin) @ w.astype(np.int32).reshape(Cin, Cout * k * k)   # (NHW, Cout k k)
        t = t.reshape(N, H, W, Cout, k, k).transpose(0, 1, 4, 2, 5, 3)            # (N, H, k, W, k, Cout)
        return t.reshape(N, H * k, W * k, Cout) + bias
    Cout, _, k, _ = w.shape
    Ho, Wo = conv_out_size(H, k, stride), conv_out_size(W, k, stride)
    pad = k // 2
    xp = np.pad(xc, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else xc
    acc = np.zeros((N, Ho, Wo, Cout), np.int32)
    for i in range(k):
        for j in range(k):
            tap = xp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :]      # (N, Ho, Wo, Cin)
            if kind == "depthwise":
                acc += tap * w[:, 0, i, j].astype(np.int32)
            else:
                acc += (tap.reshape(-1, Cin) @ w[:, :, i, j].astype(np.int32).T).reshape(N, Ho, Wo, Cout)
    return acc + bias


def conv(x, zx, w, bias, kind, stride, mult, zy, lo=0, hi=255) -> np.ndarray:
    """A quantized conv (`conv_acc`) requantized to uint8, clamped to [lo, hi] (a ReLU6)."""
    return requantize(conv_acc(x, zx, w, bias, kind, stride), mult, zy, lo, hi)


def conv_float(x, zx, w, bias, out_mult) -> np.ndarray:
    """A quantized 1x1 conv whose output stays float (the head): float32(acc) * out_mult, with
    out_mult = float32(s_x * s_w) per output channel."""
    return conv_acc(x, zx, w, bias, "conv").astype(np.float32) * out_mult


def add(a, pa, b, pb, py) -> np.ndarray:
    """uint8 of dq(a) + dq(b), each (scale, zero point): the sum of the two float32 dequantized
    tensors, in float32, quantized (ONNX Runtime's QLinearAdd, stated as its QDQ form)."""
    return quantize_linear(dequantize_linear(a, *pa) + dequantize_linear(b, *pb), *py)


def layer_norm(x, px, weight, bias, eps, py) -> np.ndarray:
    """LayerNorm over channels of a quantized map, quantized again. With d = x - zx (integers),
    S1 = sum d, S2 = sum d^2 (exact), in float64: mean = S1 / C, var = (C S2 - S1^2) / C^2 (the
    population variance of d), inv = 1 / sqrt(var * sx^2 + eps); y = (d - mean) * sx * inv * w + b,
    rounded to float32 and quantized (the LayerNorm of dq(x), torch's biased variance)."""
    sx, zx = px
    C = x.shape[-1]
    d = _centred(x, zx).astype(np.int64)
    s1 = d.sum(axis=-1, keepdims=True)
    s2 = (d * d).sum(axis=-1, keepdims=True)
    sx = np.float64(np.float32(sx))
    mean = s1.astype(np.float64) / C
    var = (C * s2 - s1 * s1).astype(np.float64) / (C * C)
    inv = 1.0 / np.sqrt(var * (sx * sx) + eps)
    y = (d.astype(np.float64) - mean) * sx * inv * weight.astype(np.float64) + bias.astype(np.float64)
    return quantize_linear(y.astype(np.float32), *py)


def exp_table(score_scale) -> np.ndarray:
    """int32 table of round(2^24 exp(-s delta)) for delta = 0..255: the softmax numerator of a
    score delta codes below its row's maximum (scores quantized with scale s take 256 values)."""
    delta = np.arange(256, dtype=np.float64)
    return np.rint(EXP_ONE * np.exp(-np.float64(np.float32(score_scale)) * delta)).astype(np.int32)


def sigmoid_table(scale, zero_point) -> np.ndarray:
    """uint8 table of quantize(sigmoid(dq(q))) with scale 1/255, zero point 0, for q = 0..255."""
    x = (np.arange(256, dtype=np.float64) - int(zero_point)) * np.float64(np.float32(scale))
    return np.rint(255.0 / (1.0 + np.exp(-x))).astype(np.uint8)


def softmax_codes(scores: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 softmax (scale 1/255, zero point 0) along the last axis of uint8 scores:
    e = table[max - score] (fixed point, 2^24 = 1, exact integers), then in float64 r = 255 / sum e
    once per row and p = round(e r), ties to even."""
    delta = scores.max(axis=-1, keepdims=True).astype(np.int32) - scores.astype(np.int32)
    e = table[delta].astype(np.int64)
    r = 255.0 / e.sum(axis=-1, keepdims=True).astype(np.float64)
    return np.rint(e.astype(np.float64) * r).astype(np.uint8)


def attention(qkv, z, heads, kind, window, patch, score_mult, score_zero, table, out_mult, out_zero) -> np.ndarray:
    """Multi-head attention inside the groups of `kind` on uint8 q, k, v (one tensor, zero point z;
    channels [q; k; v], heads contiguous): per group and head, S = (q - z)(k - z)^T exact,
    requantized to uint8 scores (score_mult = s_qkv^2 d^-1/2 / s_scores); softmax over keys
    (`softmax_codes`); A = P (v - z) exact (P in 1/255 steps), requantized (out_mult = s_qkv /
    255 / s_out). (N, H, W, 3C) -> (N, H, W, C)."""
    N, H, W, C3 = qkv.shape
    C = C3 // 3
    d = C // heads
    t = partition(_centred(qkv, z), kind, window, patch)                  # (G, T, 3C)
    G, T, _ = t.shape
    t = t.reshape(G, T, 3, heads, d).transpose(2, 0, 3, 1, 4)             # (3, G, heads, T, d)
    scores = requantize(t[0] @ t[1].swapaxes(-1, -2), score_mult, score_zero)   # (G, heads, T, T)
    p = softmax_codes(scores, table).astype(np.int32)
    out = requantize(p @ t[2], out_mult, out_zero)                         # (G, heads, T, d)
    out = out.transpose(0, 2, 1, 3).reshape(G, T, C)
    return reverse(out, kind, (N, H, W, C), window, patch)


def mean_pool(x, px, py) -> np.ndarray:
    """uint8 (N, C) of the spatial mean of dq(x): float32(sum(x - zx) / (H W) * sx) (sum exact,
    then float64), quantized."""
    N, H, W, C = x.shape
    s = _centred(x, px[1]).astype(np.int64).sum(axis=(1, 2))
    mean = s.astype(np.float64) / (H * W) * np.float64(np.float32(px[0]))
    return quantize_linear(mean.astype(np.float32), *py)


def gate(x, zx, g, mult, zy) -> np.ndarray:
    """x * g per channel: (x - zx) * g exact (g (N, C) uint8 in 1/255 steps), requantized
    (mult = s_x / 255 / s_y)."""
    return requantize(_centred(x, zx) * g[:, None, None, :].astype(np.int32), mult, zy)


def dequantize(x, px) -> np.ndarray:
    return dequantize_linear(x, *px)


SOFTMAX = (SOFTMAX_SCALE, np.uint8(0))
