"""Plain NumPy references, each written from the op's definition.

Maps are NHWC; weights keep their PyTorch layouts (DESIGN section 3): Conv2d
(Cout, Cin/groups, kh, kw), ConvTranspose2d (Cin, Cout, kh, kw), Linear (out, in).
The dtype of the inputs flows through: float64 in, float64 out (the oracle path).
These functions do not count; `refpose.ops.Ops` reports MACs around them.
"""
from __future__ import annotations

import numpy as np

from .geometry import conv_out_size, partition, reverse


def _pad_hw(x: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1) -> np.ndarray:
    """Dense 2-D convolution (cross-correlation), zero padding k//2.

    y[n, oh, ow, co] = b[co] + sum_{i, j, ci} x[n, oh*s + i - k//2, ow*s + j - k//2, ci] * w[co, ci, i, j]
    """
    N, H, W, Cin = x.shape
    Cout, _, kh, kw = w.shape
    Ho, Wo = conv_out_size(H, kh, stride), conv_out_size(W, kw, stride)
    if (kh, kw, stride) == (1, 1, 1):           # a 1x1 conv is a linear layer over the pixels
        return linear(x, w[:, :, 0, 0], b)
    xp = _pad_hw(x, kh // 2) if kh > 1 else x
    y = np.zeros((N * Ho * Wo, Cout), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :]   # (N, Ho, Wo, Cin)
            y += tap.reshape(-1, Cin) @ w[:, :, i, j].T
    if b is not None:
        y += b
    return y.reshape(N, Ho, Wo, Cout)


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1) -> np.ndarray:
    """Depthwise convolution (groups = C), zero padding k//2; w is (C, 1, k, k).

    y[n, oh, ow, c] = b[c] + sum_{i, j} x[n, oh*s + i - k//2, ow*s + j - k//2, c] * w[c, 0, i, j]
    """
    N, H, W, C = x.shape
    _, _, kh, kw = w.shape
    Ho, Wo = conv_out_size(H, kh, stride), conv_out_size(W, kw, stride)
    xp = _pad_hw(x, kh // 2)
    taps = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))     # (kh, kw, C): each tap's C weights contiguous
    y = np.zeros((N, Ho, Wo, C), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :] * taps[i, j]
    if b is not None:
        y += b
    return y


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 2) -> np.ndarray:
    """Transposed convolution with kernel == stride (non-overlapping taps, no padding).

    y[n, h*s + a, w*s + c, co] = b[co] + sum_ci x[n, h, w, ci] * w[ci, co, a, c]
    """
    N, H, W, Cin = x.shape
    _, Cout, kh, kw = w.shape
    if (kh, kw) != (stride, stride):
        raise ValueError(f"conv_transpose2d supports kernel == stride only, got kernel {kh}x{kw}, stride {stride}")
    y = x.reshape(N * H * W, Cin) @ w.reshape(Cin, Cout * kh * kw)  # (NHW, Cout*kh*kw)
    y = y.reshape(N, H, W, Cout, kh, kw)
    y = y.transpose(0, 1, 4, 2, 5, 3)                                 # (N, H, kh, W, kw, Cout)
    y = y.reshape(N, H * kh, W * kw, Cout)
    if b is not None:
        y = y + b
    return y


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """y = x W^T + b over the last axis; w is (out, in)."""
    # one (tokens, in) x (in, out) product: a 4-D @ 2-D matmul would call BLAS once per row
    y = x.reshape(-1, x.shape[-1]) @ w.T
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0])


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last (channel) axis, biased variance, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum exp(x); the row maximum is subtracted first so exp never overflows."""
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), written with tanh so that large negative x does not overflow exp."""
    return 0.5 * (1 + np.tanh(0.5 * x))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v over (..., T, d) (Vaswani et al. 2017, Eq. 1)."""
    d = q.shape[-1]
    scores = (q * d ** -0.5) @ k.swapaxes(-1, -2)   # (..., T, T); scaling q is T/d times cheaper
    return softmax(scores) @ v


def grouped_attention(qkv: np.ndarray, heads: int, kind: str,
                      window: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """Multi-head attention inside the groups of `kind`; qkv (N, H, W, 3C) -> (N, H, W, C).

    qkv channels are [q; k; v], each C wide with heads contiguous (Swin/timm layout).
    """
    N, H, W, C3 = qkv.shape
    C = C3 // 3
    t = partition(qkv, kind, window, patch)                 # (G, T, 3C)
    G, T, _ = t.shape
    t = t.reshape(G, T, 3, heads, C // heads)
    t = t.transpose(2, 0, 3, 1, 4)                          # (3, G, heads, T, d)
    out = attention(t[0], t[1], t[2])                       # (G, heads, T, d)
    out = out.transpose(0, 2, 1, 3).reshape(G, T, C)        # (G, T, C), heads concatenated
    return reverse(out, kind, (N, H, W, C), window, patch)


def squeeze_excite(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """SE (Hu et al. 2018): x * sigmoid(W2 relu(W1 mean_HW(x) + b1) + b2); w are (out, in, 1, 1)."""
    s = x.mean(axis=(1, 2))                                 # (N, C)
    s = relu(linear(s, w1[:, :, 0, 0], b1))                 # (N, C/r)
    s = sigmoid(linear(s, w2[:, :, 0, 0], b2))              # (N, C)
    return x * s[:, None, None, :]
