"""Numba kernels of the fast path (DESIGN section 4).

Names start with `_`, as in stumpy (`_sliding_dot_product` is the loop, `sliding_dot_product`
the public function): `refpose.ops.fast` wraps each kernel in a function with the name and
signature of its NumPy reference (or, for the fused blocks, of the ops it fuses). Every
kernel takes C-contiguous arrays of one float dtype and writes into an output array the
caller allocates. The matmuls are register tiles written in LLVM IR (`refpose.ops.simd`).

- Compiled once per dtype, on first use, and cached on disk (`cache=True`): a second process
  loads the machine code instead of compiling it again. Nothing is compiled per call.
- Each `prange` iteration writes its own set of output elements (a row, a pixel, a token)
  and nothing else, and computes each of them the same way wherever it lies, so results do
  not depend on the thread count, on scheduling, or on how a fused kernel splits its work.
- fastmath is limited to `FASTMATH` (contraction to FMA, signed
  zeros); never `nnan`/`ninf`, so NaN and inf propagate as in NumPy.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import simd
from .jitcache import cache_kernels
from .pointers import call_at, parallel
from .simd import TILE_ROWS

FASTMATH = {"contract", "nsz"}
JIT = dict(cache=cache_kernels(__file__), fastmath=FASTMATH)   # on disk wherever a folder is writable
# Parallel loops are the explicit `prange`s only: Numba's other parallel transforms (array
# expressions, slice assignments, np.zeros turned into parallel loops) would act inside a
# prange body, where they run serially anyway, and cost compile time.
PRANGE_ONLY = {"prange": True, "comprehension": False, "setitem": False, "reduction": False, "numpy": False,
               "stencil": False, "fusion": False, "inplace_binop": False}


# --- exp for softmax ------------------------------------------------------------------------
# float32: Cephes `expf` (x = n ln2 + r with |r| <= ln2/2, exp(r) = 1 + r + r^2 P(r), P of degree 5),
# written with plain arithmetic so that LLVM vectorises the softmax loop; libm's expf is a
# scalar call. The two-part ln 2 keeps the relative error within a few ulp over [-87, 0].
# float64 keeps math.exp: it is the oracle path.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)          # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in 9 bits
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                                         4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXPF_MIN = np.float32(-87.3)              # exp(-87.3) ~ 1.2e-38, the smallest normal float32
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the 32 bits of an int32 as a float32 (the exponent trick of 2**n)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _exp_nonpositive(x):
    """exp(x) for x <= 0 (the shifted scores of a softmax); NaN stays NaN."""
    return math.exp(x)


@overload(_exp_nonpositive, jit_options=JIT)
def _exp_nonpositive_impl(x):
    if x == types.float32:
        def expf(x):
            if x < _EXPF_MIN:             # written so that NaN (all comparisons false) stays NaN
                x = _EXPF_MIN
            n = np.floor(x * _LOG2E + _HALF)
            r = x - n * _LN2_HI - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            y = p * (r * r) + r + _ONE
            # 2**n from its bit pattern: n >= -126, so the exponent field n + 127 is normal
            return y * _float32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
        return expf
    return lambda x: math.exp(x)


# --- sums in a fixed order ------------------------------------------------------------------
# `reassoc` is not in FASTMATH: with it LLVM chose the order of a sum's terms, and a kernel
# compiled in this process summed in another order than the same kernel loaded from the cache
# (a float32 forward differed by ~1e-6 between the two). Eight explicit lanes give SIMD
# without it, in one order for every build.
@njit(inline="always")
def _lanes_total(s0, s1, s2, s3, s4, s5, s6, s7):
    """The eight lanes' partial sums added pairwise: the one order every lane sum ends with."""
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(inline="always")
def _sum(row):
    """sum(row) over 8 independent lanes, added pairwise at the end."""
    T = row.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = row.dtype.type(0)
    j = 0
    while j + 8 <= T:
        s0 += row[j]
        s1 += row[j + 1]
        s2 += row[j + 2]
        s3 += row[j + 3]
        s4 += row[j + 4]
        s5 += row[j + 5]
        s6 += row[j + 6]
        s7 += row[j + 7]
        j += 8
    while j < T:
        s0 += row[j]
        j += 1
    return _lanes_total(s0, s1, s2, s3, s4, s5, s6, s7)


@njit(inline="always")
def _sum_sq_dev(row, mean):
    """sum((row - mean)^2) over 8 independent lanes (the centred second moment of LayerNorm)."""
    T = row.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = row.dtype.type(0)
    j = 0
    while j + 8 <= T:
        t0, t1, t2, t3 = row[j] - mean, row[j + 1] - mean, row[j + 2] - mean, row[j + 3] - mean
        t4, t5, t6, t7 = row[j + 4] - mean, row[j + 5] - mean, row[j + 6] - mean, row[j + 7] - mean
        s0 += t0 * t0
        s1 += t1 * t1
        s2 += t2 * t2
        s3 += t3 * t3
        s4 += t4 * t4
        s5 += t5 * t5
        s6 += t6 * t6
        s7 += t7 * t7
        j += 8
    while j < T:
        t0 = row[j] - mean
        s0 += t0 * t0
        j += 1
    return _lanes_total(s0, s1, s2, s3, s4, s5, s6, s7)


# --- elementwise helpers and norms -------------------------------------------------------
@njit(inline="always")
def _clip(v, lo, hi):
    """min(max(v, lo), hi) as np.clip: comparisons are false for NaN, which passes through."""
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


# --- matmul with its epilogue --------------------------------------------------------------
# The 1x1 convs, linear layers and the transposed conv: y = x W^T + b, then ReLU6 if asked, in
# one kernel. The weights are packed by the caller (`pack_weights`) into panels of PANEL
# vectors' width, each panel K rows of contiguous columns; `simd.tile_fma` runs a tile of
# TILE_ROWS rows x one panel with the sums in registers (8 rows of 512-bit vectors with
# AVX-512, else 4 rows of 256-bit ones: see `refpose.ops.simd`). Every output element is
# computed the same way wherever it lies (a tile, a short tile, a left-over column): the
# products x[m, k] w[n, k] accumulated from zero with one fused multiply-add per k, in k
# order, then b[n] added. So the result depends neither on the tiling, nor on the thread
# count, nor on the row's place in a batch, nor on the vector width. Parallel over chunks of
# rows (and, when there are few rows, over groups of panels).
PANEL = 3                      # vectors per panel: the TILE_ROWS x 3 register tile of `simd.tile_fma`
ROW_CHUNK = 64                 # rows per work item (a multiple of TILE_ROWS); a panel stays in L1 across its tiles
MIN_ITEMS = 8                  # fewer row chunks than this: split the panels between items too
B_IN_L1 = 32 * 1024            # bytes of B below which `_tiles` goes row by row (see there)
# Constants passed to the helpers that are compiled apart (`_tiles`, `_dw_row`), inside an operand
# tuple too: a literal 0 or True there would compile one more copy of the helper for that literal.
ZERO, ONE, YES, NO = np.intp(0), np.intp(1), np.bool_(True), np.bool_(False)


@njit(**JIT)
def _edge_tile(rows, cols, K, A, B, C, epilogue):
    """A tile at the edge of a matmul (see `_tiles`): what `simd.tile_fma` computes, with the
    same operand tuples (A, B, C, epilogue), for any rows <= TILE_ROWS and cols <= PANEL vectors.
    Blocks of 4 rows of whole vectors go to `simd.tile_fma`, anything else (the rows and columns
    left over) to a plain loop that does the same arithmetic: `simd.fma` from zero in k order,
    then the bias, the clip and the sum."""
    a, a0, lda, ka = A
    b, b0, ldb = B
    c, c0, ldc = C
    bias, bias0, relu6, res, add_res = epilogue
    L = simd.vector_lanes(c)
    nvec = cols // L if cols % L == 0 else 0         # at most PANEL
    r = 0
    while nvec and r + 4 <= rows:
        Ar, Cr = (a, a0 + r * lda, lda, ka), (c, c0 + r * ldc, ldc)       # from row r
        if nvec == 3:
            simd.tile_fma(4, 3, K, Ar, B, Cr, epilogue)
        elif nvec == 2:
            simd.tile_fma(4, 2, K, Ar, B, Cr, epilogue)
        else:
            simd.tile_fma(4, 1, K, Ar, B, Cr, epilogue)
        r += 4
    lo, hi = c.dtype.type(0), c.dtype.type(6)
    for r in range(r, rows):
        for j in range(cols):
            acc = c.dtype.type(0)
            for k in range(K):
                acc = simd.fma(a[a0 + r * lda + k * ka], b[b0 + k * ldb + j], acc)
            v = bias[bias0 + j] + acc
            if relu6:
                v = _clip(v, lo, hi)
            at = c0 + r * ldc + j
            c[at] = res[at] + v if add_res else v


@njit(inline="always")
def _panel(p, N, L):
    """First column and width of panel p of N columns: whole panels of PANEL vectors, then one
    short panel of whole vectors, then one panel of the columns left over."""
    width = PANEL * L
    full = N // width
    if p < full:
        return p * width, width
    tail = (N - full * width) // L * L
    if p == full and tail:
        return p * width, tail
    return full * width + tail, N - full * width - tail


@njit(inline="always")
def _n_panels(N, L):
    width = PANEL * L
    full = N // width
    tail = (N - full * width) // L * L
    return full + (1 if tail else 0) + (1 if N - full * width - tail else 0)


def pack_weights(w: np.ndarray) -> np.ndarray:
    """The flat layout `_matmul_bias_act` reads, from weights w (N, K): the panels of the N
    columns (see `_panel`) one after another, each as K rows of its columns' weights."""
    N, K = w.shape
    L = simd.lanes(w.dtype)
    width = PANEL * L
    full = N // width
    tail = (N - full * width) // L * L
    main = w[:full * width].reshape(full, width, K).transpose(0, 2, 1)
    return np.concatenate([main.ravel(), w[full * width:full * width + tail].T.ravel(),
                           w[full * width + tail:].T.ravel()])


@njit(**JIT)
def _tiles(M, N, K, A, B, C, epilogue, panels):
    """C (M, N) = A (M, K) B (K, N) + bias, clipped to [0, 6] if `relu6`, plus res if `add_res`,
    over the columns of panels p_lo .. p_hi - 1, in this thread. The operands are tuples of flat
    arrays (one signature per dtype, so this compiles once), as `simd.tile_fma`'s but with the
    row strides of B and C the width N:
      A = (a, a0, lda, ka)              A[m, k] is a[a0 + m*lda + k*ka] (lda = K, ka = 1 for rows
                                        in place; lda = 1 for a transposed block)
      B = (b, b0, packed)               B[k, n] is b[b0 + k*N + n], or when `packed` the panels of
                                        `pack_weights` (w (N, K) with B = w^T; b0 = 0)
      C = (c, c0)                       C[m, n] is c[c0 + m*N + n]
      epilogue = (bias, relu6, res, add_res)    bias[n] added to column n; res has C's layout
      panels = (p_lo, p_hi)

    Whole TILE_ROWS x PANEL tiles go to `simd.tile_fma` from a loop that calls nothing else
    (with the edge cases in the same loop it ran at half speed), then the short panel's tiles of
    TILE_ROWS rows from a loop of their own; the edges (the columns left over, the last rows) to
    `_edge_tile`. Where B fits in L1 the tiles go row by row (each output row written whole);
    otherwise panel by panel over ROW_CHUNK rows, so a panel stays in L1 while its tiles read
    it. Each tile's operands: A from row t, B from panel column n0 (the panel's own rows when
    packed), C from (t, n0), the bias from n0.
    """
    a, a0, lda, ka = A
    b, b0, packed = B
    c, c0 = C
    bias, relu6, res, add_res = epilogue
    p_lo, p_hi = panels
    L = simd.vector_lanes(c)
    width = PANEL * L
    full = min(p_hi, N // width)
    whole = M // TILE_ROWS * TILE_ROWS
    rows_first = K * N * c.itemsize <= B_IN_L1
    for r0 in range(0, whole, ROW_CHUNK):
        r1 = min(whole, r0 + ROW_CHUNK)
        if rows_first:
            for t in range(r0, r1, TILE_ROWS):
                for p in range(p_lo, full):
                    n0 = p * width
                    simd.tile_fma(TILE_ROWS, PANEL, K, (a, a0 + t * lda, lda, ka),
                                  (b, n0 * K if packed else b0 + n0, width if packed else N),
                                  (c, c0 + t * N + n0, N), (bias, n0, relu6, res, add_res))
        else:
            for p in range(p_lo, full):
                n0 = p * width
                for t in range(r0, r1, TILE_ROWS):
                    simd.tile_fma(TILE_ROWS, PANEL, K, (a, a0 + t * lda, lda, ka),
                                  (b, n0 * K if packed else b0 + n0, width if packed else N),
                                  (c, c0 + t * N + n0, N), (bias, n0, relu6, res, add_res))
    # the short panel of whole vectors (1 or 2 of them: PANEL is 3), if there is one in range
    s = N // width
    n0, cols = _panel(s, N, L)
    short = p_lo <= s < p_hi and cols >= L
    if short:
        for t in range(0, whole, TILE_ROWS):
            if cols == 2 * L:
                simd.tile_fma(TILE_ROWS, 2, K, (a, a0 + t * lda, lda, ka),
                              (b, n0 * K if packed else b0 + n0, cols if packed else N),
                              (c, c0 + t * N + n0, N), (bias, n0, relu6, res, add_res))
            else:
                simd.tile_fma(TILE_ROWS, 1, K, (a, a0 + t * lda, lda, ka),
                              (b, n0 * K if packed else b0 + n0, cols if packed else N),
                              (c, c0 + t * N + n0, N), (bias, n0, relu6, res, add_res))
    for p in range(p_lo, p_hi):                        # the edges: the columns left over, the last rows
        n0, cols = _panel(p, N, L)
        for t in range(whole if p < full or (short and p == s) else 0, M, TILE_ROWS):
            _edge_tile(min(TILE_ROWS, M - t), cols, K, (a, a0 + t * lda, lda, ka),
                       (b, n0 * K if packed else b0 + n0, cols if packed else N),
                       (c, c0 + t * N + n0, N), (bias, n0, relu6, res, add_res))


@njit(parallel=PRANGE_ONLY, **JIT)
def _matmul_bias_act(item_at, x, wp, b, relu6, res, y):
    """y (M, N) = x (M, K) w (N, K)^T + b (N,), then ReLU6 if `relu6`, then + res (M, N) if res
    is not empty; wp = pack_weights(w).

    y[m, n] = b[n] + (sum_k x[m, k] w[n, k], accumulated from zero by fused multiply-adds in
    k order). One item per chunk of ROW_CHUNK rows and group of panels (`_matmul_items`); items
    write disjoint blocks of y, each element once. Each item is `_matmul_item`, called at its
    address `item_at` (`refpose.ops.pointers`): the tiles are not linked into this kernel.
    """
    for item in prange(_matmul_items(x.shape[0], _n_panels(y.shape[1], simd.vector_lanes(y)))[0]):
        call_at(item_at, (np.intp(item), x, wp, b, relu6, res, y))


@njit(inline="always")
def _matmul_items(M, n_panels):
    """(items, panel groups, panels per group) of a matmul of M rows: a chunk of ROW_CHUNK rows
    per item, its panels split between items too when there are fewer than MIN_ITEMS chunks."""
    chunks = (M + ROW_CHUNK - 1) // ROW_CHUNK
    groups = 1 if chunks >= MIN_ITEMS else min(n_panels, (MIN_ITEMS + chunks - 1) // chunks)
    per_group = (n_panels + groups - 1) // groups if groups else 0
    return chunks * groups, groups, per_group


@njit(**JIT)
def _matmul_item(item, x, wp, b, relu6, res, y):
    """Item `item` of `_matmul_bias_act`: its rows and panels on the tiles, in this thread."""
    M, K = x.shape
    N = y.shape[1]
    n_panels = _n_panels(N, simd.vector_lanes(y))
    _, groups, per_group = _matmul_items(M, n_panels)
    c, g = item // groups, item % groups
    r0, r1 = c * ROW_CHUNK, min(M, c * ROW_CHUNK + ROW_CHUNK)
    _tiles(r1 - r0, N, K, (x.reshape(-1), r0 * K, K, ONE), (wp, ZERO, YES), (y.reshape(-1), r0 * N),
           (b, relu6, res.reshape(-1), res.size > 0), (g * per_group, min(n_panels, g * per_group + per_group)))


@njit(inline="always")
def _norm_row(row, weight, bias, eps, out):
    """LayerNorm of one row (torch's biased variance): two passes (mean, then the centred second
    moment), which stays accurate where E[x^2] - E[x]^2 would cancel."""
    C = row.size
    mean = _sum(row) / C
    inv = 1 / np.sqrt(_sum_sq_dev(row, mean) / C + eps)
    for c in range(C):
        out[c] = (row[c] - mean) * inv * weight[c] + bias[c]


@njit(**JIT)
def _norm_columns(xT, weight, bias, eps, out):
    """LayerNorm of every column of xT (C, T) into out (C, T): column t gets the bits `_norm_row`
    gives the row xT[:, t], as the same sums in the same order (`_sum`'s and `_sum_sq_dev`'s
    eight lanes, the left-over terms in lane 0, `_lanes_total`), but for all T tokens
    at once, so every loop runs along the tokens, contiguous and vectorised. A function of its
    own, not inlined into the attention block: that cost the block's compile 1.5 s."""
    simd.full_width_loops()
    C, T = xT.shape
    main = C // 8 * 8
    lanes, sq = np.zeros((8, T), xT.dtype), np.zeros((8, T), np.float64)   # the types `_sum`, `_sum_sq_dev` use
    mean, inv = np.empty(T, np.float64), np.empty(T, np.float64)
    for j in range(C):
        lane, xj = lanes[j % 8 if j < main else 0], xT[j]
        for t in range(T):
            lane[t] += xj[t]
    for t in range(T):
        mean[t] = _lanes_total(lanes[0, t], lanes[1, t], lanes[2, t], lanes[3, t],
                               lanes[4, t], lanes[5, t], lanes[6, t], lanes[7, t]) / C
    for j in range(C):
        lane, xj = sq[j % 8 if j < main else 0], xT[j]
        for t in range(T):
            dev = xj[t] - mean[t]
            lane[t] += dev * dev
    for t in range(T):
        total = _lanes_total(sq[0, t], sq[1, t], sq[2, t], sq[3, t], sq[4, t], sq[5, t], sq[6, t], sq[7, t])
        inv[t] = 1 / np.sqrt(total / C + eps)
    for c in range(C):
        xc, oc, w, b = xT[c], out[c], weight[c], bias[c]
        for t in range(T):
            oc[t] = (xc[t] - mean[t]) * inv[t] * w + b


@njit(**JIT)
def _transpose(a, out):
    """out (C, T) = a (T, C)^T, eight rows of a at a time (each read once per column block)."""
    T, C = a.shape
    t0 = 0
    while t0 + 8 <= T:
        for c in range(C):
            o = out[c]
            o[t0], o[t0 + 1], o[t0 + 2], o[t0 + 3] = a[t0, c], a[t0 + 1, c], a[t0 + 2, c], a[t0 + 3, c]
            o[t0 + 4], o[t0 + 5], o[t0 + 6], o[t0 + 7] = a[t0 + 4, c], a[t0 + 5, c], a[t0 + 6, c], a[t0 + 7, c]
        t0 += 8
    for t in range(t0, T):
        for c in range(C):
            out[c, t] = a[t, c]


@njit(parallel=PRANGE_ONLY, **JIT)
def _layer_norm(row_at, x, weight, bias, eps, y):
    """LayerNorm over the last axis of x (M, C) into y (M, C), one row per iteration
    (`_layer_norm_row`, called at its address `row_at`)."""
    for m in prange(x.shape[0]):
        call_at(row_at, (np.intp(m), x, weight, bias, eps, y))


@njit(**JIT)
def _layer_norm_row(m, x, weight, bias, eps, y):
    """Row m of `_layer_norm`."""
    _norm_row(x[m], weight, bias, eps, y[m])


# --- depthwise and transposed convolution --------------------------------------------------
@njit(inline="always")
def _dw_row(x, w, b, stride, relu6, oh, out):
    """Output row oh of a depthwise conv (zero padding k//2) of the map x (H, W, C) into out (Wo, C):
    out[ow, c] = b[c] + sum_{i, j} x[oh*s + i - k//2, ow*s + j - k//2, c] * w[i, j, c],
    taps outside the map skipped (zero padding without a padded copy), channels innermost.
    Inlined into `_dw_item`, its only caller: compiled once, there."""
    H, W, C = x.shape
    k = w.shape[0]
    Wo = out.shape[0]
    pad = k // 2
    lo, hi = out.dtype.type(0), out.dtype.type(6)
    for ow in range(Wo):
        acc = out[ow]
        for c in range(C):
            acc[c] = b[c]
        for i in range(k):
            ih = oh * stride + i - pad
            if ih < 0 or ih >= H:
                continue
            row = x[ih]
            for j in range(k):
                iw = ow * stride + j - pad
                if iw < 0 or iw >= W:
                    continue
                xv, wv = row[iw], w[i, j]
                for c in range(C):
                    acc[c] += xv[c] * wv[c]
        if relu6:
            for c in range(C):
                acc[c] = _clip(acc[c], lo, hi)


@njit(parallel=PRANGE_ONLY, **JIT)
def _depthwise_conv(row_at, x, w, b, stride, relu6, y):
    """Depthwise conv, zero padding k//2: x (N, H, W, C), w (k, k, C), b (C,) -> y (N, Ho, Wo, C);
    one output row per iteration, `_dw_item` called at its address `row_at`
    (`refpose.ops.pointers`)."""
    for r in prange(x.shape[0] * y.shape[1]):
        call_at(row_at, (np.intp(r), x, w, b, stride, relu6, y))


@njit(**JIT)
def _dw_item(r, x, w, b, stride, relu6, y):
    """Output row r (of N * Ho) of `_depthwise_conv`."""
    Ho = y.shape[1]
    n, oh = r // Ho, r % Ho
    _dw_row(x[n], w, b, stride, relu6, oh, y[n, oh])


@njit(parallel=PRANGE_ONLY, **JIT)
def _depthwise_conv_planar(row_at, x, w, b, stride, relu6, y):
    """The same depthwise conv on planar maps, for a few channels (the RGB input of the stem):
    x (N, C, H, W), w (C, k, k), b (C,) -> y (N, C, Ho, Wo).

    With 3 channels the NHWC kernel's channel loop is 3 long; here the innermost loop runs along
    an output row instead. For each tap (i, j) the valid columns are those with
    0 <= ow*s + j - k//2 < W, so the row loop needs no bounds test. One output row per iteration,
    `_dw_planar_item` called at its address `row_at` (`refpose.ops.pointers`).
    """
    for r in prange(x.shape[0] * x.shape[1] * y.shape[2]):
        call_at(row_at, (np.intp(r), x, w, b, stride, relu6, y))


@njit(**JIT)
def _dw_planar_item(r, x, w, b, stride, relu6, y):
    """Output row r (of N * C * Ho) of `_depthwise_conv_planar`."""
    _, C, H, W = x.shape
    k = w.shape[1]
    _, _, Ho, Wo = y.shape
    pad = k // 2
    lo, hi = y.dtype.type(0), y.dtype.type(6)
    n, c, oh = r // (C * Ho), (r // Ho) % C, r % Ho
    yr = y[n, c, oh]
    for ow in range(Wo):
        yr[ow] = b[c]
    for i in range(k):
        ih = oh * stride + i - pad
        if ih < 0 or ih >= H:
            continue
        xr = x[n, c, ih]
        for j in range(k):
            first = max(0, (pad - j + stride - 1) // stride)       # first ow with ow*s + j - pad >= 0
            stop = min(Wo, (W - 1 + pad - j) // stride + 1)        # first ow with ow*s + j - pad >= W
            wv = w[c, i, j]
            for ow in range(first, stop):
                yr[ow] += xr[ow * stride + j - pad] * wv
    if relu6:
        for ow in range(Wo):
            yr[ow] = _clip(yr[ow], lo, hi)


@njit(**JIT)
def _conv_transpose_scatter(t, b, relu6, y):
    """Place the taps of a kernel == stride transposed conv: t (N, H, W, Cout, k, k) -> y (N, Hk, Wk, Cout).

    t[n, h, w, co, a, c] = sum_ci x[n, h, w, ci] * w[ci, co, a, c] (one BLAS matmul);
    y[n, h*k + a, w*k + c, co] = t[n, h, w, co, a, c] + b[co], then ReLU6 if `relu6`.
    One thread: a copy of the matmul's output, and one parallel kernel fewer to compile.
    """
    N, H, W, C, k, _ = t.shape
    lo, hi = y.dtype.type(0), y.dtype.type(6)
    for r in range(N * H):
        n, h = r // H, r % H
        for w in range(W):
            for a in range(k):
                for c in range(k):
                    dst = y[n, h * k + a, w * k + c]
                    for co in range(C):
                        v = t[n, h, w, co, a, c] + b[co]
                        dst[co] = _clip(v, lo, hi) if relu6 else v


# --- grouped attention ---------------------------------------------------------------------
# One head's attention (`_attend`) works on q, k and v held transposed, each a d x T block with
# the T tokens along its rows, and keeps the T x T scores in a private buffer (147 kB at T = 192
# in float32, so it stays in L2): no score tensor for the whole map, no BLAS call per group.
# The scores are kept transposed too (key-major: sT[j, i] is key j against query i), so that
# every innermost loop runs along the T queries: long, contiguous and free of reductions, which
# LLVM vectorises without `reassoc` (sums stay in one fixed order, the same in every build).
# The fused block computes q, k and v transposed in the first place (W_qkv times the normalised
# group transposed), so its heads are row blocks of one buffer and nothing is gathered; the
# unfused kernel gathers a head's q, k, v from the pixel rows. Both give the same bits: every
# element is the same sum in the same order.
# `pix[g, t]` is the flat pixel (n*H*W + h*W + w) of token t of group g, from
# `geometry.partition`, so the kernels serve window and global grouping alike.
@njit(inline="always")
def _larger(a, b):
    return a if a > b else b


@njit(inline="always")
def _softmax_columns(sT, peak, total):
    """Unnormalised softmax of every column of sT (T keys, T queries), in place:
    sT[:, i] <- exp(sT[:, i] - max_j sT[j, i]), peak[i] <- that maximum, total[i] <- the column's sum.

    The column maximum is subtracted first, so exp never overflows: its argument is <= 0.
    The sums run in key order in the same pass as the exps. The division by the total is left
    to the output, where it touches d values, not T.
    """
    T = sT.shape[0]
    for i in range(T):
        peak[i] = sT[0, i]
        total[i] = 0
    for j in range(1, T):
        sj = sT[j]
        for i in range(T):
            peak[i] = _larger(sj[i], peak[i])
    for j in range(T):
        sj = sT[j]
        for i in range(T):
            e = _exp_nonpositive(sj[i] - peak[i])
            sj[i] = e
            total[i] += e


@njit(**JIT)
def _attend(x, q0, k0, v0, T, d, out, o0):
    """One head's attention among T tokens (Vaswani et al. 2017, Eq. 1), all blocks transposed:
    q (already scaled by 1/sqrt(d)), k and v are the d x T blocks of the flat array x at q0, k0,
    v0 (x[q0 + c*T + i] is channel c of token i), and out[o0 + c*T + i] = sum_j softmax_j(q_i . k_j)
    v[j, c]."""
    simd.full_width_loops()
    dtype = x.dtype
    sT = np.empty(T * T, dtype)
    peak, total, zero = np.empty(T, dtype), np.empty(T, dtype), np.zeros(T, dtype)
    panels = (ZERO, _n_panels(T, simd.vector_lanes(x)))
    # sT[j, i] = k_j . q_i: A = k, read from its transposed block (row j at k0 + j, step T along c);
    # the epilogue adds a bias of zeros, without clip or residual
    _tiles(T, T, d, (x, k0, ONE, T), (x, q0, NO), (sT, ZERO), (zero, NO, sT, NO), panels)
    _softmax_columns(sT.reshape((T, T)), peak, total)
    _tiles(d, T, T, (x, v0, T, ONE), (sT, ZERO, NO), (out, o0), (zero, NO, out, NO), panels)   # sum_j v[j, c] p[j, i]
    inv = np.empty(T, np.float64)
    for i in range(T):
        inv[i] = 1 / total[i]
    for c in range(d):
        for i in range(T):
            out[o0 + c * T + i] = out[o0 + c * T + i] * inv[i]


@njit(parallel=PRANGE_ONLY, **JIT)
def _grouped_attention(item_at, qkv, pix, heads, out):
    """Multi-head attention in groups: qkv (P, 3C) pixel rows, pix (G, T) -> out (P, C).

    Each iteration takes one (group, head): it gathers the head's q (scaled), k and v from the
    pixel rows into transposed blocks, attends (`_attend`), and writes its d channels of the T
    pixels. Every pixel is one token of one group, so each output element is written by exactly
    one iteration. Each iteration is `_grouped_item`, called at its address `item_at`
    (`refpose.ops.pointers`).
    """
    for gh in prange(pix.shape[0] * heads):
        call_at(item_at, (np.intp(gh), qkv, pix, heads, out))


@njit(**JIT)
def _grouped_item(gh, qkv, pix, heads, out):
    """(Group, head) gh of `_grouped_attention`."""
    T = pix.shape[1]
    C = out.shape[1]
    d = C // heads
    dtype = qkv.dtype
    scale = dtype.type(1 / math.sqrt(d))
    g, h = gh // heads, gh % heads
    rows = pix[g]
    buf = np.empty(4 * d * T, dtype)                    # q, k, v, then the output, each d x T
    for t in range(T):
        row = qkv[rows[t]]
        for c in range(d):
            buf[c * T + t] = row[h * d + c] * scale
            buf[(d + c) * T + t] = row[C + h * d + c]
            buf[(2 * d + c) * T + t] = row[2 * C + h * d + c]
    _attend(buf, ZERO, d * T, 2 * d * T, T, d, buf, 3 * d * T)
    for t in range(T):
        dst = out[rows[t]]
        for c in range(d):
            dst[h * d + c] = buf[(3 * d + c) * T + t]


@njit(parallel=PRANGE_ONLY, **JIT)
def _attention_block(group_at, x, pix, norm, qkv, heads, proj, y):
    """A whole attention sub-block, y = x + proj(MHSA(qkv(LayerNorm(x)))), one group per
    iteration: x, y (P, C) pixel rows, pix (G, T); each layer's parameters a tuple:
    norm = (weight (C,), bias (C,), eps), qkv = (W (3C, C) flat and row-major, b (3C,)),
    proj = (W packed by `pack_weights`, b (C,)).

    The group's rows are normalised into a transposed block, from which one matmul gives q, k
    and v transposed (3C x T: W_qkv times it), so each head's blocks are rows of that buffer;
    the heads write their outputs transposed too, and the projection reads them as a transposed
    A. All in buffers of T columns (in cache): only y is written, and the (P, 3C) and (P, C)
    maps between the steps never reach memory. Each element is the sum the unfused ops compute,
    in the same order (`_norm_row`, the tiles, `_attend`; the bias of q, k, v is added after the
    sum, as the tiles do), so the result is theirs bit for bit.

    Each group is `_attention_group`, called at its address `group_at` (`pointers.jit_address`
    of `_attention_group` for (0, x, pix, norm, qkv, heads, proj, y)): not linked into this
    kernel, which then compiles in ~0.6 s of CPU instead of ~5.5 s (see `refpose.ops.pointers`).
    """
    for g in prange(pix.shape[0]):
        call_at(group_at, (np.intp(g), x, pix, norm, qkv, heads, proj, y))


@njit(**JIT)
def _attention_group(g, x, pix, norm, qkv, heads, proj, y):
    """Group g of `_attention_block`: its tokens are the pixel rows pix[g]."""
    simd.full_width_loops()
    rows = pix[g]
    T = rows.shape[0]
    C = x.shape[1]
    d = C // heads
    norm_w, norm_b, eps = norm
    wqkv, bqkv = qkv
    wproj, bproj = proj
    dtype = x.dtype
    scale = dtype.type(1 / math.sqrt(d))
    n_tok, n_proj = _n_panels(T, simd.vector_lanes(y)), _n_panels(C, simd.vector_lanes(y))
    xg, xnT = np.empty((T, C), dtype), np.empty((C, T), dtype)
    for t in range(T):                 # element by element: a row assigned whole (xg[t] = x[...]) compiles
        src, dst = x[rows[t]], xg[t]      # Numba's shape-mismatch message, string formatting that cost ~4 s
        for c in range(C):
            dst[c] = src[c]
    _transpose(xg, xnT)
    _norm_columns(xnT, norm_w, norm_b, eps, xnT)            # in place: each column is read before it is written
    qkvT, zero = np.empty(3 * C * T, dtype), np.zeros(T, dtype)
    _tiles(3 * C, T, C, (wqkv, ZERO, C, ONE), (xnT.reshape(-1), ZERO, NO), (qkvT, ZERO), (zero, NO, qkvT, NO),
           (ZERO, n_tok))
    for o in range(3 * C):                              # the bias; q scaled as the unfused kernel does
        bo = bqkv[o]
        if o < C:
            for i in range(T):
                qkvT[o * T + i] = (qkvT[o * T + i] + bo) * scale
        else:
            for i in range(T):
                qkvT[o * T + i] = qkvT[o * T + i] + bo
    attT = np.empty(C * T, dtype)
    for h in range(heads):
        _attend(qkvT, h * d * T, (C + h * d) * T, (2 * C + h * d) * T, T, d, attT, h * d * T)
    yg = np.empty((T, C), dtype)
    _tiles(T, C, C, (attT, ZERO, ONE, T), (wproj, ZERO, YES), (yg.reshape(-1), ZERO),
           (bproj, NO, xg.reshape(-1), YES), (ZERO, n_proj))
    for t in range(T):
        src, dst = yg[t], y[rows[t]]
        for c in range(C):
            dst[c] = src[c]


# The parallel kernels as the fast path calls them: each with the address of its item function
# for the operands' types (`refpose.ops.pointers`: the items are not linked into the kernels).
matmul_bias_act = parallel(_matmul_bias_act, _matmul_item)
depthwise_conv = parallel(_depthwise_conv, _dw_item)
depthwise_conv_planar = parallel(_depthwise_conv_planar, _dw_planar_item)
attention_block = parallel(_attention_block, _attention_group)
layer_norm = parallel(_layer_norm, _layer_norm_row)
grouped_attention = parallel(_grouped_attention, _grouped_item)
