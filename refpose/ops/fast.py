"""Fast path: the reference ops with the same names and signatures, on Numba kernels.

Everything hot is a Numba kernel from `refpose.ops.kernels` on NHWC maps viewed as (pixels,
channels): the matmul of 1x1 convs, linear layers and the transposed conv (register tiles
from `refpose.ops.simd` on weights packed once per read-only weight; bias, ReLU6 and a
residual sum fused), the depthwise conv, LayerNorm and attention. `attention_block` runs LayerNorm,
qkv, attention and projection over one group at a time, so the qkv map stays in cache; it
gives the bits of those ops run one by one.
No BLAS call, so no second thread pool takes turns with Numba's inside a forward. The conv
ops take `relu6` and `residual`, which `Ops` passes on this path only. Everything runs in
the dtype of the inputs, float32 or float64 (DESIGN section 4: one forward, two dtypes).
Threads: Numba's, as `refpose.threads` decides once.
"""
from __future__ import annotations

import weakref

import numpy as np

from . import geometry, kernels, precompile, reference, simd

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PLANAR_BELOW = 8           # depthwise convs with fewer channels run on planar maps


def _dtype(*arrays) -> np.dtype:
    dtype = np.result_type(*arrays)
    if dtype not in DTYPES:
        raise TypeError(f"the fast path runs in float32 or float64, not {dtype}")
    return dtype


def _c(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`a` as a contiguous, writable array of `dtype`: Numba compiles a kernel again for read-only
    arrays (a model's weights are read-only), so those few vectors are copied instead."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


_KEPT: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}


def _kept(owner: np.ndarray, key: str, make) -> np.ndarray:
    """make(), derived from `owner`: a read-only owner (every weight a model binds, see
    `weights.from_tensors`) cannot change, so what is derived from it is made on first use and
    kept until the owner is freed; for a writable owner it is made on every call."""
    k = (id(owner), key)
    hit = _KEPT.get(k)
    if hit is not None and hit[0]() is owner:
        return hit[1]
    value = make()
    if not owner.flags.writeable:
        _KEPT[k] = (weakref.ref(owner, lambda _, k=k, cache=_KEPT: cache.pop(k, None)), value)
    return value


def _vector(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A bias or norm weight as the kernels take it (`_c`: a writable copy of a read-only one)."""
    return _kept(v, dtype.str, lambda: _c(v, dtype))


def _bias(b, n: int, dtype: np.dtype) -> np.ndarray:
    """A bias of n entries as the kernels take it: zeros for none; b followed by zeros for the
    columns `_panels` pads (kept like `_vector(b)`, which it is when nothing is padded)."""
    if b is None:
        return np.zeros(n, dtype)
    pad = n - len(b)
    return _kept(b, dtype.str + (f"+{pad}" if pad else ""),
                 lambda: _c(np.concatenate([b, np.zeros(pad, b.dtype)]) if pad else b, dtype))


def _whole_vectors(n: int, dtype: np.dtype) -> int:
    """n rounded up to whole vectors of `dtype`."""
    L = simd.lanes(dtype)
    return -(-n // L) * L


def _panels(owner: np.ndarray, layout: str, w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`kernels.pack_weights` of w (N, K), which is `owner` in `layout`, kept with a read-only
    owner (`_kept`). N is padded with zero rows to whole vectors: a column left over from the
    vectors runs scalar code (the head's 17 joints: 16 + 1), a padded one is one more lane."""
    def make():
        wc = _c(w, dtype)
        pad = _whole_vectors(len(wc), dtype) - len(wc)
        return kernels.pack_weights(np.concatenate([wc, np.zeros((pad, wc.shape[1]), dtype)]) if pad else wc)
    return _kept(owner, layout + dtype.str, make)


NONE = {dtype: np.empty((0, 0), dtype) for dtype in DTYPES}   # "no residual"


def _matmul(x: np.ndarray, panels: np.ndarray, N: int, b, relu6: bool, residual=None) -> np.ndarray:
    """x (M, K) @ w (N, K)^T + b, then ReLU6 if asked, then + residual (M, N) if given, for
    panels = `_panels(... w ...)`: one kernel, bias, clip and sum fused. Computed over the
    padded columns too (each element the same sum, wherever it lies), which the result leaves
    out: then it is a view of every row's first N columns."""
    dtype, M = x.dtype, x.shape[0]
    Np = _whole_vectors(N, dtype)
    res = NONE[dtype] if residual is None else _c(residual, dtype).reshape(M, N)
    if residual is not None and Np != N:
        res = np.concatenate([res, np.zeros((M, Np - N), dtype)], axis=1)
    y = np.empty((M, Np), dtype)
    precompile.wait_for("_tiles", dtype)
    kernels.matmul_bias_act(x, panels, _bias(b, Np, dtype), relu6, res, y)
    return y if Np == N else y[:, :N]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1,
           relu6: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """Dense conv; a 1x1 conv is one matmul over the pixels: (NHW, Cin) @ (Cin, Cout), bias,
    ReLU6 and the residual sum fused."""
    N, H, W, Cin = x.shape
    Cout, _, kh, kw = w.shape
    if (kh, kw) != (1, 1):   # WGNet has no dense k x k conv; keep the reference's generality
        y = reference.conv2d(x, w, b, stride)
        if relu6:
            np.clip(y, 0, 6, out=y)
        return y if residual is None else np.add(residual, y, out=y)
    dtype = _dtype(x, w)
    if stride != 1:
        x = x[:, ::stride, ::stride]                           # (N, Ho, Wo, Cin)
    _, Ho, Wo, _ = x.shape
    panels = _panels(w, "oi", w.reshape(Cout, Cin), dtype)
    y = _matmul(_c(x, dtype).reshape(N * Ho * Wo, Cin), panels, Cout, b, relu6, residual)   # (NHW, Cout)
    return y.reshape(N, Ho, Wo, Cout)


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1,
                     relu6: bool = False) -> np.ndarray:
    """Depthwise conv, zero padding k//2; w (C, 1, k, k). One kernel does the taps, the bias
    and the ReLU6 in one pass over the output: vectors along the channels (NHWC), or, for
    fewer than PLANAR_BELOW channels (the RGB input), along the rows of planar maps."""
    N, H, W, C = x.shape
    _, _, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"depthwise_conv2d supports square kernels, got {kh}x{kw}")
    dtype = _dtype(x, w)
    Ho, Wo = geometry.conv_out_size(H, kh, stride), geometry.conv_out_size(W, kw, stride)
    if C < PLANAR_BELOW:
        xp = _c(x.transpose(0, 3, 1, 2), dtype)                   # (N, C, H, W); a view when x came from NCHW
        y = np.empty((N, C, Ho, Wo), dtype)
        kernels.depthwise_conv_planar(xp, _kept(w, "ckk" + dtype.str, lambda: _c(w[:, 0], dtype)), _bias(b, C, dtype),
                                       stride, relu6, y)
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1))       # (N, Ho, Wo, C)
    wk = _kept(w, "kkc" + dtype.str, lambda: _c(w[:, 0].transpose(1, 2, 0), dtype))   # (k, k, C): channels innermost
    y = np.empty((N, Ho, Wo, C), dtype)
    kernels.depthwise_conv(_c(x, dtype), wk, _bias(b, C, dtype), stride, relu6, y)
    return y


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 2,
                     relu6: bool = False) -> np.ndarray:
    """Transposed conv with kernel == stride: one matmul for every tap, then a scatter that adds
    the bias (and clips)."""
    N, H, W, Cin = x.shape
    _, Cout, kh, kw = w.shape
    if (kh, kw) != (stride, stride):
        raise ValueError(f"conv_transpose2d supports kernel == stride only, got kernel {kh}x{kw}, stride {stride}")
    dtype = _dtype(x, w)
    panels = _panels(w, "taps", w.reshape(Cin, Cout * kh * kw).T, dtype)   # w as (Cout k k, Cin)
    t = _matmul(_c(x, dtype).reshape(N * H * W, Cin), panels, Cout * kh * kw, None, False)
    t = t.reshape(N, H, W, Cout, kh, kw)                       # taps of each input pixel
    y = np.empty((N, H * kh, W * kw, Cout), dtype)
    kernels._conv_transpose_scatter(t, _bias(b, Cout, dtype), relu6, y)
    return y


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, residual: np.ndarray | None = None) -> np.ndarray:
    """y = x W^T + b (+ residual) over the last axis: one matmul kernel with the bias and the
    sum fused."""
    dtype = _dtype(x, w)
    out, cin = w.shape
    y = _matmul(_c(x, dtype).reshape(-1, cin), _panels(w, "oi", w, dtype), out, b, False, residual)   # (tokens, out)
    return y.reshape(*x.shape[:-1], out)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the channel axis (torch.nn.LayerNorm), one row per kernel iteration."""
    dtype = _dtype(x, weight)
    C = x.shape[-1]
    x2 = _c(x, dtype).reshape(-1, C)                           # (pixels, C)
    y = np.empty_like(x2)
    kernels.layer_norm(x2, _vector(weight, dtype), _vector(bias, dtype), dtype.type(eps), y)
    return y.reshape(x.shape)


def grouped_attention(qkv: np.ndarray, heads: int, kind: str,
                      window: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """Multi-head attention inside the groups of `kind`; qkv (N, H, W, 3C) -> (N, H, W, C).

    One Numba kernel (`kernels._grouped_attention`) does each (group, head) whole: gather,
    scores, softmax, weighted values and the write to the pixels, with the T x T scores in
    cache; the token order comes from `token_pixels`.
    """
    N, H, W, C3 = qkv.shape
    C = C3 // 3
    dtype = _dtype(qkv)
    pix = _c(geometry.token_pixels(N, H, W, kind, window, patch), np.intp)   # (G, T)
    out = np.empty((N * H * W, C), dtype)
    kernels.grouped_attention(_c(qkv, dtype).reshape(N * H * W, C3), pix, heads, out)
    return out.reshape(N, H, W, C)


def attention_block(x: np.ndarray, norm_weight: np.ndarray, norm_bias: np.ndarray, eps: float,
                    qkv_w: np.ndarray, qkv_b: np.ndarray, heads: int, kind: str,
                    window: tuple[int, int], patch: tuple[int, int],
                    proj_w: np.ndarray, proj_b: np.ndarray) -> np.ndarray:
    """x + Proj(MHSA(Group(LN(x)))) (NHWC): one kernel over the groups (`kernels._attention_block`),
    so the qkv and attention maps stay in cache. It gives the bits of `layer_norm`, `linear`,
    `grouped_attention` and `linear` with the residual run one by one, and those ops run instead
    where the channel count is not a whole number of vectors (the projection's panels are padded
    to whole vectors, see `_panels`). Any token count takes the kernel (the tiles' edges cover
    the tokens past the last whole vector), so the named configs compile no unfused attention."""
    N, H, W, C = x.shape
    dtype = _dtype(x, qkv_w)
    pix = _c(geometry.token_pixels(N, H, W, kind, window, patch), np.intp)   # (G, T)
    if C % simd.lanes(dtype):
        qkv = linear(layer_norm(x, norm_weight, norm_bias, eps), qkv_w, qkv_b)
        return linear(grouped_attention(qkv, heads, kind, window, patch), proj_w, proj_b, residual=x)
    y = np.empty((N * H * W, C), dtype)
    norm = (_vector(norm_weight, dtype), _vector(norm_bias, dtype), dtype.type(eps))
    qkv = (_kept(qkv_w, "rows" + dtype.str, lambda: _c(qkv_w, dtype).reshape(-1)), _vector(qkv_b, dtype))
    proj = (_panels(proj_w, "oi", proj_w, dtype), _vector(proj_b, dtype))
    precompile.wait_for("_attention_block", dtype)
    kernels.attention_block(_c(x, dtype).reshape(N * H * W, C), pix, norm, qkv, heads, proj, y)
    return y.reshape(N, H, W, C)


def squeeze_excite(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """SE as `reference.squeeze_excite`, its two small products on the matmul kernel: an image's gate
    then does not depend on the other images of its batch (BLAS sums an N-row product in an order
    that depends on N)."""
    s = x.mean(axis=(1, 2))                                         # (N, C), image by image
    s = reference.relu(linear(s, w1[:, :, 0, 0], b1))               # (N, C/r)
    s = reference.sigmoid(linear(s, w2[:, :, 0, 0], b2))            # (N, C)
    return x * s[:, None, None, :]
