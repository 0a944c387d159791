"""Numba kernels of the int8 fast path. Each computes what its op in `refpose.quant.reference`
computes, to the bit: integer sums are exact whatever their order, and the float steps are the
same float32 / float64 operations in the same order (no fastmath: no contraction into fused
multiply-adds, no reassociation). Compiled once, at first use, and cached on disk (`cache=True`).
Each prange iteration writes its own rows.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

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


@njit(inline="always")
def _code(acc, mult, z, lo, hi):
    """The uint8 code of an int32 sum, as `qdq.requantize` defines it: clip(rint(float32(acc) * mult)
    + z, lo, hi), the product in float32, ties to even (z, lo, hi float32). acc is converted from
    int32 even where Numba typed its expression int64 (int32 + int32 is int64 there): the sums fit
    in int32 by construction, and int64 -> float32 has no vector instruction before AVX-512DQ, so
    such a loop would run one element at a time."""
    return np.uint8(min(max(np.rint(np.float32(np.int32(acc)) * mult) + z, lo), hi))


def _store(tile, cols, r0, n0, scale, out):
    """Rows r0.. and columns n0.. of out from a tile of int32 sums (TILE_ROWS rows of `cols`, flat):
    requantized for a uint8 out (`qdq.requantize`: clip(rint(float32(acc) * mult) + zy, lo, hi),
    the product in float32, ties to even), float32(acc) * mult for a float32 one (the
    head's output); scale = (mult, zero point, lo, hi)."""


@overload(_store, jit_options=JIT)
def _store_impl(tile, cols, r0, n0, scale, out):
    if out.dtype == types.uint8:
        def requantized(tile, cols, r0, n0, scale, out):
            mult, zy, lo, hi = scale
            z, flo, fhi = np.float32(zy), np.float32(lo), np.float32(hi)
            n = min(cols, out.shape[1] - n0)
            m = mult[n0:n0 + n]
            for r in range(min(TILE_ROWS, out.shape[0] - r0)):
                o, t = out[r0 + r, n0:n0 + n], tile[r * cols:r * cols + n]
                for j in range(n):
                    o[j] = _code(t[j], m[j], z, flo, fhi)
        return requantized

    def to_float(tile, cols, r0, n0, scale, out):
        n = min(cols, out.shape[1] - n0)
        m = scale[0][n0:n0 + n]
        for r in range(min(TILE_ROWS, out.shape[0] - r0)):
            o, t = out[r0 + r, n0:n0 + n], tile[r * cols:r * cols + n]
            for j in range(n):
                o[j] = np.float32(t[j]) * m[j]
    return to_float


@njit(parallel=PARALLEL, **JIT)
def _matmul(a, Kp, wp, bias, scale, out):
    """out (M, N) = the int32 sums a (Mp, Kp) . w^T + bias for wp = pack_weights(w), each tile
    stored through `_store` as it is done (requantized to uint8, or scaled to float32) while it
    is in L1; Mp a multiple of TILE_ROWS, bias padded to whole vectors. One work item per
    ROW_CHUNK rows and group of panels (groups only when there are few chunks, so that both
    threads have work): panel by panel, the chunk's tiles, so that a panel stays in cache while
    its tiles read it."""
    Mp, Np = a.shape[0], bias.shape[0]
    K = Kp // GROUP
    af = a.reshape(-1)
    width = PANEL * LANES
    n_panels = (Np + width - 1) // width
    chunks = (Mp + ROW_CHUNK - 1) // ROW_CHUNK
    groups = 1 if chunks >= MIN_ITEMS else min(n_panels, (MIN_ITEMS + chunks - 1) // chunks)
    per_group = (n_panels + groups - 1) // groups
    for item in prange(chunks * groups):
        c, grp = item // groups, item % groups
        tile = np.empty(TILE_ROWS * width, np.int32)
        r_lo, r_hi = c * ROW_CHUNK, min(Mp, c * ROW_CHUNK + ROW_CHUNK)
        for p in range(grp * per_group, min(n_panels, grp * per_group + per_group)):
            n0 = p * width
            cols = min(width, Np - n0)
            B, E = (wp, n0 * Kp, cols * GROUP), (bias, n0)
            for r0 in range(r_lo, r_hi, TILE_ROWS):
                _tile(cols, K, (af, r0 * Kp, Kp), B, (tile, 0, cols), E)
                _store(tile, cols, r0, n0, scale, out)


# --- depthwise and transposed convolution ------------------------------------------------------
@njit(parallel=PARALLEL, **JIT)
def _depthwise(x, zx, w, bias, stride, scale, out):
    """out (N, Ho, Wo, C) uint8: bias + the sum over the k x k taps inside the map of (x - zx) w,
    requantized with scale = (mult (C,), zero point, lo, hi) (`qdq.requantize`); x (N, H, W, C)
    uint8, w (k, k, C) int32. One output row per iteration, its int32 sums in a row of scratch."""
    N, H, W, C = x.shape
    k = w.shape[0]
    _, Ho, Wo, _ = out.shape
    pad = k // 2
    mult, zy, lo, hi = scale
    z, flo, fhi = np.float32(zy), np.float32(lo), np.float32(hi)
    for r in prange(N * Ho):
        n, oh = r // Ho, r % Ho
        acc = np.empty((Wo, C), np.int32)
        for ow in range(Wo):
            a = acc[ow]
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
        for ow in range(Wo):
            a, o = acc[ow], out[n, oh, ow]
            for c in range(C):
                o[c] = _code(a[c], mult[c], z, flo, fhi)


@njit(parallel=PARALLEL, **JIT)
def _scatter_taps(t, Cout, k, y):
    """y (N, Hk, Wk, Cout) from t (N, H, W, >= Cout k k), tap (a, b) of channel co at
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


# The attention's products on the same tiles, from raw codes: with a = q (or p, 0..255) unsigned
# and b = k - 128 (or v - 128) in [-128, 127], a signed byte,
#     sum a (b' - z) = sum a (b' - 128) + (128 - z) sum a        (b' the code of k or v)
# and for the scores the query's own zero point as a per-key term:
#     S = sum (q - z)(k - z) = sum q (k - 128) + (128 - z) sum q - z sum (k - z).
# So the uint8 x int8 body (vpdpbusd, four products per lane) takes them where the CPU has it,
# the int16 one elsewhere; both sums are exact, the same integers either way.
A_CODES = np.uint8 if VNNI else np.int16           # the tiles' element types (`simd.tile_dot`)
B_CODES = np.int8 if VNNI else np.int16


@njit(**JIT)
def _pack_key_value(row, t, k0, v0, d, kp, kbias, vp, Tn, TG, dn, dG):
    """Token t's key (row[k0:k0 + d]) into column t of kp, as the tiles read B for S = q . k^T,
    with kbias[t] = -128 sum (k - 128) ... the per-key term of S (see above, with z added by the
    caller); its value (row[v0:v0 + d]) into row t of the summed axis of vp, for P . v."""
    width = PANEL * LANES
    n0 = t // width * width
    w = min(width, Tn - n0)
    kb = n0 * dG + (t - n0) * GROUP
    ksum = np.int32(0)
    for c in range(d):
        kc = np.int32(row[k0 + c]) - 128
        ksum += kc
        kp[kb + c // GROUP * (GROUP * w) + c % GROUP] = kc
    kbias[t] = ksum
    for m0 in range(0, dn, width):
        wv = min(width, dn - m0)
        vb = m0 * TG + t // GROUP * (GROUP * wv) + t % GROUP - GROUP * m0
        for c in range(m0, min(m0 + wv, d)):
            vp[vb + GROUP * c] = np.int32(row[v0 + c]) - 128


@njit(**JIT)
def _products(a, kb, b, y, bias):
    """y (TILE_ROWS, Ny) int32 = bias + a (TILE_ROWS, Ka) . b^T, b packed as `pack_weights` lays it
    out (Ka a multiple of GROUP, Ny of LANES)."""
    Ka, Ny = a.shape[1], y.shape[1]
    width = PANEL * LANES
    for n0 in range(0, Ny, width):
        cols = min(width, Ny - n0)
        _tile(cols, Ka // GROUP, (a.reshape(-1), 0, Ka), (b, n0 * kb, cols * GROUP), (y.reshape(-1), n0, Ny),
              (bias, n0))


@njit(**JIT)
def _softmax_row(s, T, extra, scores, table, e, p):
    """p[:T] = `reference.softmax_codes` of the scores s[:T] + extra (int32 sums) requantized with
    scores = (multiplier, zero point), and the sum of p; e is scratch. The requantisation and the
    maximum in one vectorised pass, the table look-ups (top - s is never negative: an unsigned
    index, no wrap-around test) and their sum in a second, the codes in a third."""
    mult, zs = scores
    lo, hi = np.float32(0), np.float32(255)
    fz = np.float32(zs)
    top = np.int32(0)
    for j in range(T):
        v = np.int32(_code(s[j] + extra, mult, fz, lo, hi))
        s[j] = v
        top = max(top, v)
    total = np.int64(0)
    for j in range(T):
        v = table[np.uint32(top - s[j])]
        e[j] = v
        total += v
    r = 255.0 / np.float64(total)
    psum = np.int32(0)
    for j in range(T):
        v = np.int32(np.rint(np.float64(e[j]) * r))
        p[j] = v
        psum += v
    return psum


@njit(parallel=PARALLEL, **JIT)
def _attention(qkv, z, pix, heads, scores, table, outq, out):
    """Multi-head attention in groups (`reference.attention`): qkv (P, 3C) uint8 pixel rows, pix
    (G, T) the groups' pixels -> out (P, C) uint8; scores and outq are the (multiplier, zero point)
    of the scores and of the output. Per (group, head): keys and values packed once for the tiles
    (as signed bytes k - 128, v - 128: see above), then TILE_ROWS queries at a time, in L1: their
    scores S = (q - z)(k - z)^T, the softmax of each row (codes 0..255), P (v - z), requantized
    into out. Work items are runs of (group, head) pairs, each with its own scratch; an item
    writes the d channels of its head at its group's pixels."""
    G, T = pix.shape
    C = out.shape[1]
    d = C // heads
    Tn, TG = (T + LANES - 1) // LANES * LANES, (T + GROUP - 1) // GROUP * GROUP
    dn, dG = (d + LANES - 1) // LANES * LANES, (d + GROUP - 1) // GROUP * GROUP
    out_mult, zo = outq[0], np.float32(outq[1])
    lo, hi = np.float32(0), np.float32(255)
    shift = np.int32(128) - z                       # (128 - z): the offset of the signed codes
    pairs = G * heads
    items = min(pairs, 64)
    for item in prange(items):
        kp, vp = np.zeros(Tn * dG, B_CODES), np.zeros(dn * TG, B_CODES)
        qa, pa = np.zeros((TILE_ROWS, dG), A_CODES), np.zeros((TILE_ROWS, TG), A_CODES)
        s, o = np.empty((TILE_ROWS, Tn), np.int32), np.empty((TILE_ROWS, dn), np.int32)
        e, kbias, zero = np.empty(T, np.int32), np.zeros(Tn, np.int32), np.zeros(dn, np.int32)
        qsum, psum = np.zeros(TILE_ROWS, np.int32), np.zeros(TILE_ROWS, np.int32)
        for gh in range(item * pairs // items, (item + 1) * pairs // items):
            g, h = gh // heads, gh % heads
            rows = pix[g]
            for t in range(T):
                _pack_key_value(qkv[rows[t]], t, C + h * d, 2 * C + h * d, d, kp, kbias, vp, Tn, TG, dn, dG)
            for t in range(T):                      # -z sum (k - z) = -z (sum (k - 128) + d (128 - z))
                kbias[t] = -z * (kbias[t] + d * shift)
            for r0 in range(0, T, TILE_ROWS):
                n = min(TILE_ROWS, T - r0)
                for i in range(n):
                    row = qkv[rows[r0 + i]]
                    total = np.int32(0)
                    for c in range(d):
                        qa[i, c] = row[h * d + c]
                        total += np.int32(row[h * d + c])
                    qsum[i] = total
                _products(qa, dG, kp, s, kbias)
                for i in range(n):
                    psum[i] = _softmax_row(s[i], T, shift * qsum[i], scores, table, e, pa[i])
                _products(pa, TG, vp, o, zero)
                for i in range(n):
                    dst = out[rows[r0 + i]]
                    oi, extra = o[i], shift * psum[i]
                    for c in range(d):
                        dst[h * d + c] = _code(oi[c] + extra, out_mult, zo, lo, hi)
