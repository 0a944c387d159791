"""Numba kernels of the int8 fast path. Each computes what its op in `refpose.quant.reference`
computes, to the bit: integer sums are exact whatever their order, and the float steps are the
same float32 / float64 operations in the same order (no fastmath: no contraction into fused
multiply-adds, no reassociation). Compiled once, at first use, and cached on disk (`cache=True`).
Each prange iteration writes its own rows.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..ops.jitcache import cache_kernels
from . import simd
from .simd import GROUP, LANES, TILE_ROWS, VNNI

JIT = dict(cache=cache_kernels(__file__))
PANEL = 3                       # vectors per panel: a TILE_ROWS x 3 tile, as the float kernels
ROW_CHUNK = 64                  # rows per work item (a multiple of TILE_ROWS), as the float kernels
MIN_ITEMS = 8                   # fewer row chunks than this: the panels are split between items too
PARALLEL = {"prange": True, "comprehension": False, "setitem": False, "reduction": False, "numpy": False,
            "stencil": False, "fusion": False, "inplace_binop": False}


# --- matmul: int32 sums of the packed operands ----------------------------------------------------
def padded(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_weights(w: np.ndarray) -> np.ndarray:
    """The flat layout `_matmul` reads, from int8 weights w (N, K): columns padded with zeros to
    whole vectors, k to whole groups; panels of PANEL vectors (the last may be narrower), each
    holding, for every k group, its columns' GROUP weights one column after another. int8 for
    vpdpbusd, int16 for vpmaddwd."""
    N, K = w.shape
    Np, Kp = padded(N, LANES), padded(K, GROUP)
    wp = np.zeros((Np, Kp), np.int8 if simd.VNNI else np.int16)
    wp[:N, :K] = w
    out = []
    for n0 in range(0, Np, PANEL * LANES):
        panel = wp[n0:n0 + PANEL * LANES]                               # (width, Kp)
        width = len(panel)
        out.append(panel.reshape(width, Kp // GROUP, GROUP).transpose(1, 0, 2).reshape(-1))   # (groups, width, GROUP)
    return np.ascontiguousarray(np.concatenate(out))


@njit(parallel=PARALLEL, **JIT)
def pack_rows(x, zx, out):
    """A (M, K) uint8 as the tiles read it, into out (Mp, Kp), zeros beyond x: the codes as they
    are for vpdpbusd (the zero point is taken off the bias), x - zx as int16 for vpmaddwd."""
    M, K = x.shape
    Mp, Kp = out.shape
    for m in prange(Mp):
        o = out[m]
        if m >= M:
            o[:] = 0
            continue
        xm = x[m]
        for k in range(K):
            if VNNI:
                o[k] = xm[k]
            else:
                o[k] = np.int16(xm[k]) - np.int16(zx)
        for k in range(K, Kp):
            o[k] = 0


@njit(**JIT)
def _tile(cols, K, A, B, C, E):
    """One tile of TILE_ROWS rows over `cols` columns: a whole panel, or the two or one vectors
    left at the end of a row (operands as `simd.tile_dot` takes them)."""
    if cols == PANEL * LANES:
        simd.tile_dot(TILE_ROWS, PANEL, K, A, B, C, E)
    elif cols == 2 * LANES:
        simd.tile_dot(TILE_ROWS, 2, K, A, B, C, E)
    else:
        simd.tile_dot(TILE_ROWS, 1, K, A, B, C, E)


@njit(parallel=PARALLEL, **JIT)
def _matmul(a, Kp, wp, bias, y):
    """y (Mp, Np) int32 = a (Mp, Kp) . w^T + bias, for wp = pack_weights(w); Mp a multiple of
    TILE_ROWS, Np of LANES. One work item per ROW_CHUNK rows and group of panels (groups only when
    there are few chunks, so that both threads have work): panel by panel, the chunk's tiles, so
    that a panel stays in cache while its tiles read it."""
    Mp, Np = y.shape
    K = Kp // GROUP
    af, yf = a.reshape(-1), y.reshape(-1)
    width = PANEL * LANES
    n_panels = (Np + width - 1) // width
    chunks = (Mp + ROW_CHUNK - 1) // ROW_CHUNK
    groups = 1 if chunks >= MIN_ITEMS else min(n_panels, (MIN_ITEMS + chunks - 1) // chunks)
    per_group = (n_panels + groups - 1) // groups
    for item in prange(chunks * groups):
        c, grp = item // groups, item % groups
        r_lo, r_hi = c * ROW_CHUNK, min(Mp, c * ROW_CHUNK + ROW_CHUNK)
        for p in range(grp * per_group, min(n_panels, grp * per_group + per_group)):
            n0 = p * width
            cols = min(width, Np - n0)
            B, E = (wp, n0 * Kp, cols * GROUP), (bias, n0)
            for r0 in range(r_lo, r_hi, TILE_ROWS):
                _tile(cols, K, (af, r0 * Kp, Kp), B, (yf, r0 * Np + n0, Np), E)


@njit(parallel=PARALLEL, **JIT)
def _requantize(acc, mult, zy, lo, hi, out):
    """out (M, N) uint8 = clip(rint(float32(acc) * mult) + zy, lo, hi) for acc (M, >= N) int32
    (`qdq.requantize`: the product in float32, ties to even)."""
    M, N = out.shape
    z, flo, fhi = np.float32(zy), np.float32(lo), np.float32(hi)
    for m in prange(M):
        for n in range(N):
            v = np.rint(np.float32(acc[m, n]) * mult[n]) + z
            out[m, n] = np.uint8(min(max(v, flo), fhi))


@njit(parallel=PARALLEL, **JIT)
def _to_float(acc, mult, out):
    """out (M, N) float32 = float32(acc) * mult (the head's output)."""
    M, N = out.shape
    for m in prange(M):
        for n in range(N):
            out[m, n] = np.float32(acc[m, n]) * mult[n]


# --- depthwise and transposed convolution ------------------------------------------------------
@njit(parallel=PARALLEL, **JIT)
def _depthwise(x, zx, w, bias, stride, acc):
    """acc (N, Ho, Wo, C) int32 = bias + sum over the k x k taps inside the map of (x - zx) w;
    x (N, H, W, C) uint8, w (k, k, C) int32. One output row per iteration."""
    N, H, W, C = x.shape
    k = w.shape[0]
    _, Ho, Wo, _ = acc.shape
    pad = k // 2
    for r in prange(N * Ho):
        n, oh = r // Ho, r % Ho
        for ow in range(Wo):
            a = acc[n, oh, ow]
            for c in range(C):
                a[c] = bias[c]
            for i in range(k):
                ih = oh * stride + i - pad
                if ih < 0 or ih >= H:
                    continue
                for j in range(k):
                    iw = ow * stride + j - pad
                    if iw < 0 or iw >= W:
                        continue
                    xv, wv = x[n, ih, iw], w[i, j]
                    for c in range(C):
                        a[c] += (np.int32(xv[c]) - zx) * wv[c]


@njit(parallel=PARALLEL, **JIT)
def _scatter_taps(t, Cout, k, y):
    """y (N, Hk, Wk, Cout) from t (N, H, W, >= Cout k k) int32, tap (a, b) of channel co at
    column co*k*k + a*k + b: the transposed conv with kernel == stride."""
    N, H, W, _ = t.shape
    for r in prange(N * H):
        n, h = r // H, r % H
        for w in range(W):
            for a in range(k):
                for b in range(k):
                    dst = y[n, h * k + a, w * k + b]
                    for co in range(Cout):
                        dst[co] = t[n, h, w, co * k * k + a * k + b]


# --- elementwise and per-row float steps --------------------------------------------------------
@njit(parallel=PARALLEL, **JIT)
def _add(a, sa, za, b, sb, zb, sy, zy, out):
    """out = quantize(dq(a) + dq(b)) over flat uint8 arrays (`reference.add`)."""
    fza, fzb, fzy = np.float32(za), np.float32(zb), np.float32(zy)
    lo, hi = np.float32(0), np.float32(255)
    for i in prange(a.size):
        v = (np.float32(a[i]) - fza) * sa + (np.float32(b[i]) - fzb) * sb
        q = np.rint(v / sy) + fzy
        out[i] = np.uint8(min(max(q, lo), hi))


@njit(parallel=PARALLEL, **JIT)
def _layer_norm(x, zx, sx, weight, bias, eps, sy, zy, out):
    """LayerNorm of every row of x (M, C) uint8 into out (M, C) uint8 (`reference.layer_norm`)."""
    M, C = x.shape
    sx64 = np.float64(sx)
    fzy, lo, hi = np.float32(zy), np.float32(0), np.float32(255)
    for m in prange(M):
        s1 = np.int64(0)
        s2 = np.int64(0)
        for c in range(C):
            d = np.int64(x[m, c]) - zx
            s1 += d
            s2 += d * d
        mean = np.float64(s1) / C
        var = np.float64(C * s2 - s1 * s1) / (C * C)
        inv = 1.0 / np.sqrt(var * (sx64 * sx64) + eps)
        for c in range(C):
            d = np.float64(np.int64(x[m, c]) - zx)
            y = np.float32((d - mean) * sx64 * inv * weight[c] + bias[c])
            q = np.rint(y / sy) + fzy
            out[m, c] = np.uint8(min(max(q, lo), hi))


@njit(**JIT)
def _pack16(w, n, k, out):
    """`pack_weights` of the int16 matrix w[:n, :k] (GROUP 2) into the zeroed flat array out, inside
    a kernel: the attention's k and v, laid out for the vpmaddwd tile."""
    Np, Kp = (n + LANES - 1) // LANES * LANES, (k + 1) // 2 * 2
    for n0 in range(0, Np, PANEL * LANES):
        width = min(PANEL * LANES, Np - n0)
        base = n0 * Kp
        for j in range(min(width, n - n0)):
            for kk in range(k):
                out[base + (kk // 2) * width * 2 + j * 2 + kk % 2] = w[n0 + j, kk]


@njit(**JIT)
def _matmul16(a, Kp, wp, y):
    """y (Mp, Np) int32 = a (Mp, Kp) int16 . w^T for wp = `_pack16(w)`, on the vpmaddwd tile, in
    this thread; Mp a multiple of TILE_ROWS, Np of LANES."""
    Mp, Np = y.shape
    af, yf = a.reshape(-1), y.reshape(-1)
    zero = np.zeros(Np, np.int32)
    width = PANEL * LANES
    K = Kp // 2
    for r0 in range(0, Mp, TILE_ROWS):
        for n0 in range(0, Np, width):
            cols = min(width, Np - n0)
            _tile(cols, K, (af, r0 * Kp, Kp), (wp, n0 * Kp, cols * 2), (yf, r0 * Np + n0, Np), (zero, n0))


@njit(parallel=PARALLEL, **JIT)
def _attention(qkv, z, pix, heads, score_mult, score_zero, table, out_mult, out_zero, out):
    """Multi-head attention in groups (`reference.attention`): qkv (P, 3C) uint8 pixel rows, pix
    (G, T) the groups' pixels -> out (P, C) uint8. One (group, head) per iteration, which writes its
    d channels of its T pixels. Both products run on the vpmaddwd tile: S = (q - z)(k - z)^T with
    the centred codes as int16, and P (v - z) with the softmax codes (0..255) as int16."""
    G, T = pix.shape
    C = out.shape[1]
    d = C // heads
    zs, zo = np.float32(score_zero), np.float32(out_zero)
    lo, hi = np.float32(0), np.float32(255)
    Tp, Tn, T2 = (T + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS, (T + LANES - 1) // LANES * LANES, (T + 1) // 2 * 2
    dn, d2 = (d + LANES - 1) // LANES * LANES, (d + 1) // 2 * 2
    for gh in prange(G * heads):
        g, h = gh // heads, gh % heads
        rows = pix[g]
        q, k, vT = np.zeros((Tp, d2), np.int16), np.empty((T, d), np.int16), np.empty((d, T), np.int16)
        for t in range(T):
            row = qkv[rows[t]]
            for c in range(d):
                q[t, c] = np.int16(row[h * d + c]) - np.int16(z)
                k[t, c] = np.int16(row[C + h * d + c]) - np.int16(z)
                vT[c, t] = np.int16(row[2 * C + h * d + c]) - np.int16(z)
        kp = np.zeros(Tn * d2, np.int16)
        _pack16(k, T, d, kp)
        s = np.empty((Tp, Tn), np.int32)
        _matmul16(q, d2, kp, s)
        p = np.zeros((Tp, T2), np.int16)
        e = np.empty(T, np.int64)
        for i in range(T):
            si = s[i]
            top = 0
            for j in range(T):
                sc = np.int32(min(max(np.rint(np.float32(si[j]) * score_mult) + zs, lo), hi))
                si[j] = sc
                top = max(top, sc)
            total = np.int64(0)
            for j in range(T):
                e[j] = table[top - si[j]]
                total += e[j]
            r = 255.0 / np.float64(total)
            for j in range(T):
                p[i, j] = np.int16(np.rint(np.float64(e[j]) * r))
        vp = np.zeros(dn * T2, np.int16)
        _pack16(vT, d, T, vp)
        o = np.empty((Tp, dn), np.int32)
        _matmul16(p, T2, vp, o)
        for i in range(T):
            dst = out[rows[i]]
            for c in range(d):
                dst[h * d + c] = np.uint8(min(max(np.rint(np.float32(o[i, c]) * out_mult) + zo, lo), hi))
