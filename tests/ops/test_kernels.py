"""The fast path (refpose/ops/fast.py and its Numba kernels) against the NumPy references.

Each fast op is compared with `refpose.ops.reference` (tested against the ops' definitions in
test_ops.py) run in float64 on the same float32-representable inputs, over odd sizes, both
strides, 3x3 and 5x5 kernels, batch > 1, 1x1 maps, single-window maps and both dtypes.
Impulse inputs and hand-built attention cases give expected values written out here; the
model-level checks compare the float32 fast model with the float64 reference model.
"""
import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from numba import njit

import refpose
from refpose import threads
from refpose.ops import Ops, fast, geometry, kernels, reference as ref, simd

pytestmark = pytest.mark.usefixtures("warm_kernels")

# Inputs are uniform in [-1, 1] and no sum below has more than ~60 terms of size <= 1 (25 taps,
# 20-channel matmuls, softmax over <= 54 keys). The float64 path differs from the reference only
# in summation order: ~1e-15, so 1e-12 is loose. float32 (unit round-off 6e-8) accumulates a
# random walk of a few 1e-7 over such sums, so 1e-5 (as in test_ops.py).
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def uniform(rng, shape, dtype=np.float64):
    """float32-representable values, so both dtypes see exactly the same numbers."""
    return rng.uniform(-1, 1, shape).astype(np.float32).astype(dtype)


def assert_close(got, want, dtype):
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {np.dtype(dtype)} (the dtype flows through)"
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


# --- depthwise convolution -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("N, H, W, C", [(2, 7, 5, 3), (1, 1, 1, 4), (1, 6, 4, 1),          # planar kernel (C < 8)
                                        (3, 2, 9, 17), (2, 5, 6, 9), (1, 1, 1, 12)])       # NHWC kernel
@pytest.mark.parametrize("relu6", [False, True])
def test_depthwise_conv_matches_reference(N, H, W, C, k, stride, dtype, relu6):
    rng = np.random.default_rng(N * 1000 + H * 100 + W * 10 + k + stride)
    x, w, b = uniform(rng, (N, H, W, C)), 2 * uniform(rng, (C, 1, k, k)), uniform(rng, C)
    want = ref.depthwise_conv2d(x, w, b, stride)
    if relu6:
        want = np.clip(want, 0, 6)
    got = fast.depthwise_conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), stride, relu6=relu6)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("C", [3, 9])            # the planar and the NHWC kernel
@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_impulse_lands_on_every_tap(k, stride, C):
    # A 1 at (h0, w0) of channel c reaches output (oh, ow) through tap (i, j) = (h0 - oh*s + k//2,
    # w0 - ow*s + k//2) when 0 <= i, j < k: y[oh, ow, c] = w[c, 0, i, j]; other channels stay 0.
    H, W = 9, 8
    w = np.arange(1, C * k * k + 1, dtype=np.float64).reshape(C, 1, k, k)   # distinct taps
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    for h0, w0, c in [(0, 0, 0), (4, 3, 1), (8, 7, 2), (1, 6, 0)]:
        x = np.zeros((1, H, W, C))
        x[0, h0, w0, c] = 1
        want = np.zeros((1, Ho, Wo, C))
        for oh in range(Ho):
            for ow in range(Wo):
                i, j = h0 - oh * stride + k // 2, w0 - ow * stride + k // 2
                if 0 <= i < k and 0 <= j < k:
                    want[0, oh, ow, c] = w[c, 0, i, j]
        np.testing.assert_array_equal(fast.depthwise_conv2d(x, w, None, stride), want)


def test_depthwise_relu6_clips_and_keeps_nan():
    x = np.array([-3.0, 0.5, 7.0, np.nan]).reshape(1, 1, 1, 4)
    w = np.zeros((4, 1, 3, 3))
    w[:, 0, 1, 1] = 1                       # identity: only the centre tap
    y = fast.depthwise_conv2d(x, w, None, 1, relu6=True)
    np.testing.assert_array_equal(y.ravel(), [0, 0.5, 6, np.nan])   # as np.clip: NaN passes through


# --- 1x1 convolution, linear, transposed convolution (one matmul kernel, epilogue fused) ------
def matmul(x, w, b, relu6=False):
    """The matmul kernel on fresh panels, into an output where an unwritten element stays NaN."""
    y = np.full((x.shape[0], w.shape[0]), np.nan, x.dtype)
    kernels.matmul_bias_act(x, kernels.pack_weights(w), b, relu6, fast.NONE[x.dtype], y)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 5, 17, 2 * kernels.PANEL * 16 + 3])
@pytest.mark.parametrize("with_residual", [False, True])
def test_columns_padded_to_whole_vectors_change_no_bit(dtype, N, with_residual):
    # fast.linear pads the weights' columns to whole vectors (the head's 17 joints run as 2
    # vectors, not 1 and a scalar column): the result is the unpadded kernel's, bit for bit,
    # with and without a residual sum, and the float64 reference's within TOL.
    rng = np.random.default_rng(N)
    x, w, b = uniform(rng, (37, 24), dtype), uniform(rng, (N, 24), dtype), uniform(rng, N, dtype)
    res = uniform(rng, (37, N), dtype) if with_residual else None
    got = fast.linear(x, w, b, residual=res)
    want = np.full((37, N), np.nan, dtype)
    kernels.matmul_bias_act(x, kernels.pack_weights(w), b, False, fast.NONE[np.dtype(dtype)] if res is None else res,
                             want)
    np.testing.assert_array_equal(got, want)
    f64 = x.astype(np.float64) @ w.astype(np.float64).T + b + (0 if res is None else res)
    np.testing.assert_allclose(got, f64, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
# rows (whole tiles are simd.TILE_ROWS = 8 or 4 rows, edges go by blocks of 4, then row by row):
# a row alone, a 4-row block and one row, tiles and their edges, several 64-row chunks
@pytest.mark.parametrize("M", [1, 5, 9, 13, 70, 135])
@pytest.mark.parametrize("K", [1, 13])
# columns, in vectors (L elements) and panels (PANEL vectors): left-overs only, a short panel
# of one vector and a left-over, a short panel of two vectors, one whole panel, whole panels +
# a short one + left-overs
@pytest.mark.parametrize("columns", ["L//2+1", "L+1", "2*L", "P", "2*P+L+3"])
def test_matmul_kernel_matches_reference_over_odd_sizes(M, K, columns, dtype):
    L = simd.lanes(np.dtype(dtype))
    N = eval(columns, {"L": L, "P": kernels.PANEL * L})
    rng = np.random.default_rng(M * 100 + K * 10 + N)
    x, w, b = uniform(rng, (M, K), dtype), uniform(rng, (N, K), dtype), 4 * uniform(rng, N, dtype)
    want = ref.linear(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    for relu6 in (False, True):
        assert_close(matmul(x, w, b, relu6), np.clip(want, 0, 6) if relu6 else want, dtype)


def test_matmul_kernel_impulse_picks_one_weight():
    # x = e_k (a single 1 in row m) picks column k of W: y[m] = w[:, k] + b, every other row = b
    M, K, N = 6, 7, 29
    w = np.arange(N * K, dtype=np.float64).reshape(N, K) + 1
    b = np.arange(N, dtype=np.float64) * 100
    for m, k in [(0, 0), (3, 6), (5, 4)]:
        x = np.zeros((M, K))
        x[m, k] = 1
        want = np.tile(b, (M, 1))
        want[m] += w[:, k]
        np.testing.assert_array_equal(matmul(x, w, b), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_element_does_not_depend_on_where_it_lies(dtype):
    # Every y[m, n] is b[n] + (fused multiply-adds from zero in k order), whether it falls in a
    # whole tile, a 4-row block or a row at the edge, a whole panel, a short panel or a left-over column, in a large
    # matmul or a one-row one: a row alone, the columns reversed and the rows reversed all give
    # the same bits.
    rng = np.random.default_rng(7)
    M, K, N = 133, 37, 2 * kernels.PANEL * simd.lanes(np.dtype(dtype)) + 11
    x, w, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype), rng.standard_normal(N).astype(dtype)
    y = matmul(x, w, b)
    np.testing.assert_array_equal(matmul(x, w[::-1].copy(), b[::-1].copy()), y[:, ::-1])
    np.testing.assert_array_equal(matmul(x[::-1].copy(), w, b), y[::-1])
    for m in (0, 66, 132):
        np.testing.assert_array_equal(matmul(x[m:m + 1], w, b), y[m:m + 1])


def test_matmul_relu6_clips_and_keeps_nan():
    x = np.array([[1.0, 0.0], [np.nan, 0.0], [-5.0, 0.0], [3.0, 1.0]], np.float32)
    w = np.ones((30, 2), np.float32)            # a panel of whole vectors and left-over columns
    got = matmul(x, w, np.full(30, 2.5, np.float32), relu6=True)
    np.testing.assert_array_equal(got[0], 3.5)
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[2], 0.0)
    np.testing.assert_array_equal(got[3], 6.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, N", [((2, 5, 7, 13), 35), ((1, 1, 3, 6), 5), ((70, 17), 50)])
def test_linear_with_a_residual_sum_matches_reference(shape, N, dtype):
    rng = np.random.default_rng(len(shape) + N)
    x, w, b = uniform(rng, shape, dtype), uniform(rng, (N, shape[-1]), dtype), uniform(rng, N, dtype)
    res = uniform(rng, shape[:-1] + (N,), dtype)
    want = res.astype(np.float64) + ref.linear(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    assert_close(fast.linear(x, w, b, residual=res), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu6", [False, True])
def test_conv1x1_with_a_residual_sum_matches_reference(dtype, relu6):
    rng = np.random.default_rng(11)
    x, w, b = uniform(rng, (2, 5, 6, 9), dtype), uniform(rng, (30, 9, 1, 1), dtype), uniform(rng, 30, dtype)
    res = 3 * uniform(rng, (2, 5, 6, 30), dtype)
    y = ref.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    want = res + (np.clip(y, 0, 6) if relu6 else y)          # the clip acts on the conv, then the sum
    assert_close(fast.conv2d(x, w, b, 1, relu6=relu6, residual=res), want, dtype)


def test_packed_weights_and_biases_are_kept_for_read_only_arrays_only():
    # A model's weights are read-only (weights.from_tensors), so their panels and the kernels'
    # copies of their biases are made once; a writable array may change between calls, so it is
    # packed (copied) again every time.
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    first = fast.linear(x, w, b)
    w *= 2
    b *= 2
    np.testing.assert_allclose(fast.linear(x, w, b), 2 * first, rtol=1e-6)
    frozen, frozen_b = w.copy(), b.copy()
    frozen.setflags(write=False)
    frozen_b.setflags(write=False)
    assert np.array_equal(fast.linear(x, frozen, frozen_b), fast.linear(x, frozen, frozen_b))
    keys = [k for k, (ref, *_) in fast._KEPT.items() if ref() is frozen or ref() is frozen_b]
    assert len(keys) == 2, keys                 # the panels of w, the copy of b
    del frozen, frozen_b
    assert not set(keys) & set(fast._KEPT)      # dropped with their weights


def test_a_model_binds_read_only_copies_of_the_callers_tensors(tiny_tensors):
    from refpose.weights import from_tensors

    model = from_tensors(tiny_tensors, "tiny")
    assert not model.head.weight.flags.writeable
    assert not model.s1.ir.expand.weight.flags.writeable     # BatchNorm folded in at bind: read-only too
    assert all(v.flags.writeable for v in tiny_tensors.values())     # the caller's dict is untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("N, H, W", [(2, 5, 7), (1, 1, 1), (3, 4, 3)])
@pytest.mark.parametrize("relu6, with_bias", [(False, True), (True, True), (True, False), (False, False)])
def test_conv1x1_matches_reference(N, H, W, stride, dtype, relu6, with_bias):
    rng = np.random.default_rng(N + H + W + stride)
    x, w, b = uniform(rng, (N, H, W, 6)), 3 * uniform(rng, (11, 6, 1, 1)), uniform(rng, 11)
    b = b if with_bias else None
    want = ref.conv2d(x, w, b, stride)
    if relu6:
        want = np.clip(want, 0, 6)
    got = fast.conv2d(x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype), stride, relu6=relu6)
    assert_close(got, want, dtype)


def test_dense_kxk_conv_falls_back_to_the_reference():
    rng = np.random.default_rng(3)
    x, w, b = uniform(rng, (2, 5, 6, 3)), uniform(rng, (4, 3, 3, 3)), uniform(rng, 4)
    np.testing.assert_allclose(fast.conv2d(x, w, b, 2, relu6=True), np.clip(ref.conv2d(x, w, b, 2), 0, 6), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 20), (2, 3, 5, 20), (1, 20)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_reference(shape, dtype, with_bias):
    rng = np.random.default_rng(len(shape))
    x, w, b = uniform(rng, shape), uniform(rng, (9, 20)), uniform(rng, 9)
    b = b if with_bias else None
    got = fast.linear(x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype))
    assert_close(got, ref.linear(x, w, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, H, W", [(2, 3, 5), (1, 1, 1), (1, 4, 3)])
@pytest.mark.parametrize("relu6", [False, True])
def test_conv_transpose_matches_reference(N, H, W, dtype, relu6):
    rng = np.random.default_rng(N * H * W)
    x, w, b = uniform(rng, (N, H, W, 7)), uniform(rng, (7, 5, 2, 2)), uniform(rng, 5)
    want = ref.conv_transpose2d(x, w, b, 2)
    if relu6:
        want = np.clip(want, 0, 6)
    assert_close(fast.conv_transpose2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), 2, relu6=relu6), want, dtype)


def test_conv_transpose_impulse():
    # A 1 at input (h, w) channel ci gives y[2h + a, 2w + c, co] = w[ci, co, a, c], zero elsewhere.
    Cin, Cout = 2, 3
    w = np.arange(1, Cin * Cout * 4 + 1, dtype=np.float64).reshape(Cin, Cout, 2, 2)
    x = np.zeros((1, 3, 2, Cin))
    x[0, 2, 1, 1] = 1
    want = np.zeros((1, 6, 4, Cout))
    want[0, 4:6, 2:4, :] = w[1].transpose(1, 2, 0)            # (a, c, co)
    np.testing.assert_array_equal(fast.conv_transpose2d(x, w, None, 2), want)


def test_conv_transpose_rejects_kernel_other_than_stride():
    with pytest.raises(ValueError, match="kernel == stride"):
        fast.conv_transpose2d(np.zeros((1, 2, 2, 3)), np.zeros((3, 4, 3, 3)), None, 2)


# --- LayerNorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 32), (4, 96)])
def test_layer_norm_matches_reference(shape, dtype):
    rng = np.random.default_rng(shape[-1])
    x, g, b = 3 * uniform(rng, shape), uniform(rng, shape[-1]), uniform(rng, shape[-1])
    got = fast.layer_norm(x.astype(dtype), g.astype(dtype), b.astype(dtype), 1e-5)
    assert_close(got, ref.layer_norm(x, g, b, 1e-5), dtype)


def test_layer_norm_of_a_constant_row_is_the_bias():
    # zero variance: (x - mean) = 0 exactly, so the output is the bias whatever eps is
    x = np.full((1, 1, 2, 5), 7.0, np.float32)
    b = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fast.layer_norm(x, np.ones(5, np.float32), b), np.broadcast_to(b, x.shape))


# --- grouped attention -------------------------------------------------------------------------
GROUPINGS = [
    # N, H, W, heads, d, kind, window, patch
    (2, 12, 9, 2, 4, "window", (4, 3), (2, 3)),      # 3 x 3 windows, batch 2
    (1, 4, 3, 3, 4, "window", (4, 3), (4, 3)),       # a single window covers the map
    (1, 1, 1, 1, 4, "window", (1, 1), (1, 1)),       # a 1x1 map: one token
    (2, 12, 9, 2, 4, "global", (4, 3), (2, 3)),      # 2 groups of 54 tokens
    (1, 8, 6, 1, 8, "global", (4, 3), (4, 3)),       # patch == window: one group, the whole map
    (1, 8, 6, 3, 2, "global", (4, 3), (1, 1)),       # 1x1 patches (MaxViT grid): 12 groups of 4
    (1, 8, 6, 2, 4, "global", (8, 6), (4, 3)),       # a single window: groups are its patches
    (2, 8, 6, 3, 5, "window", (4, 3), (4, 3)),       # odd head size: the kernel's 4-channel steps leave 1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, H, W, heads, d, kind, window, patch", GROUPINGS)
def test_grouped_attention_matches_reference(N, H, W, heads, d, kind, window, patch, dtype):
    rng = np.random.default_rng(H * W + heads)
    qkv = 2 * uniform(rng, (N, H, W, 3 * heads * d))
    want = ref.grouped_attention(qkv, heads, kind, window, patch)
    assert_close(fast.grouped_attention(qkv.astype(dtype), heads, kind, window, patch), want, dtype)


def test_token_pixels_cover_every_pixel_once():
    for N, H, W, _, _, kind, window, patch in GROUPINGS:
        pix = geometry.token_pixels(N, H, W, kind, window, patch)
        np.testing.assert_array_equal(np.sort(pix.ravel()), np.arange(N * H * W))


def test_global_tokens_are_the_same_patch_of_every_window():
    # 8x6 map, 4x3 windows (2 x 2 of them), 2x3 patches: group 1 is the lower patch of each
    # window, rows 2-3 of the window, all 3 columns (written out by hand from section 3.2).
    pix = geometry.token_pixels(1, 8, 6, "global", (4, 3), (2, 3))
    assert pix.shape == (2, 24)
    rows = [2, 3, 6, 7]
    want = sorted(h * 6 + w for h in rows for w in range(6))
    assert sorted(pix[1]) == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_with_huge_scores_is_one_hot_and_finite(dtype):
    # Scores ~ 2e4 would overflow exp without the max subtraction. Token i's query and key both
    # point along its own unit vector u_i, with q.k d^-0.5 = 2e4 cos(u_i, u_j): its own key wins
    # by 2e4 (1 - max cos) >= 100, so the softmax is one-hot to working precision
    # (exp(-100) ~ 4e-44) and out_i = v_i.
    rng = np.random.default_rng(5)
    T, d = 12, 8
    u = rng.standard_normal((T, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    margin = 1 - (u @ u.T - 2 * np.eye(T)).max()               # 1 - the largest cosine off the diagonal
    assert 2e4 * margin >= 100                                 # the test's own precondition
    q, k, v = 2e4 * d ** 0.5 / 100 * u, 100 * u, uniform(rng, (T, d))
    qkv = np.concatenate([q, k, v], axis=1).reshape(1, 4, 3, 3 * d).astype(dtype)
    out = fast.grouped_attention(qkv, 1, "window", (4, 3), (4, 3))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.reshape(T, d), v, rtol=TOL[dtype], atol=TOL[dtype])


@njit
def _softmax_columns(sT, peak, total):
    kernels._softmax_columns(sT, peak, total)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_subtracts_the_column_maximum(dtype):
    # The attention kernel keeps its scores key-major: column i holds query i's scores.
    # exp(s - max) and its sum, from float64 np.exp; columns shifted by +-1e4 give the same
    # (the shifts and differences are exact in both dtypes); the maximum may sit in any row.
    cols = np.array([[0.0, -1.0, -2.0, -50.0], [1e4, 1e4 - 1, 1e4 - 2, 1e4 - 50],
                     [-1e4, -1e4 - 1, -1e4 - 2, -1e4 - 50], [-50.0, -2.0, 0.0, -1.0]])
    s = np.ascontiguousarray(cols.T.astype(dtype))
    peak, total = np.empty(4, dtype), np.empty(4, dtype)
    _softmax_columns(s, peak, total)
    np.testing.assert_array_equal(peak, cols.max(axis=1).astype(dtype))
    e = np.exp(np.array([0.0, -1.0, -2.0, -50.0]))
    for i in range(3):
        np.testing.assert_allclose(s[:, i], e, rtol=4 * np.finfo(dtype).eps, atol=0)
        np.testing.assert_allclose(total[i], e.sum(), rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(s[:, 3], e[[3, 2, 0, 1]], rtol=4 * np.finfo(dtype).eps, atol=0)


@njit
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = kernels._exp_nonpositive(x[i])


def test_float32_exp_is_accurate_to_a_few_ulp():
    # Cephes expf is within ~2 ulp (1.2e-7) with its two-part ln 2; 4e-7 leaves room for the
    # rounding of 2**n r and the final product, over [-87, 0].
    x = np.concatenate([-np.geomspace(1e-8, 87, 20000), [0.0, -0.5, -1.0, -np.log(2)]]).astype(np.float32)
    got = np.empty_like(x)
    _exp_all(x, got)
    want = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=0)
    # below the float32 normal range the result is clamped to ~1e-38: nothing next to the max's 1
    tiny = np.array([-88.0, -100.0, -1e30, -np.inf], np.float32)
    _exp_all(tiny, got[:4])
    assert (got[:4] >= 0).all() and (got[:4] <= 1.3e-38).all()
    nan = np.array([np.nan], np.float32)
    _exp_all(nan, got[:1])
    assert np.isnan(got[0])


def test_every_output_element_is_written_by_the_kernels():
    # outputs prefilled with NaN: a kernel that skipped an element would leave a NaN behind
    rng = np.random.default_rng(9)
    N, H, W, heads, d = 2, 8, 6, 2, 4
    x = uniform(rng, (N * H * W, 3 * heads * d))
    qkv = x.reshape(N, H, W, 3 * heads * d)
    for kind, patch in [("window", (4, 3)), ("global", (2, 3)), ("global", (1, 1))]:
        pix = np.array(geometry.token_pixels(N, H, W, kind, (4, 3), patch))   # writable, as fast passes it
        out = np.full((N * H * W, heads * d), np.nan)
        kernels.grouped_attention(x, pix, heads, out)
        assert not np.isnan(out).any()
        want = ref.grouped_attention(qkv, heads, kind, (4, 3), patch).reshape(N * H * W, heads * d)
        np.testing.assert_allclose(out, want, rtol=TOL[np.float64], atol=TOL[np.float64])
    x = uniform(rng, (2, 7, 5, 3))
    for k, s in [(3, 1), (5, 2)]:
        y = np.full((2, (7 - 1) // s + 1, (5 - 1) // s + 1, 3), np.nan)
        kernels.depthwise_conv(x, np.ones((k, k, 3)), np.zeros(3), s, False, y)
        assert not np.isnan(y).any()
        y = np.full((2, 3, (7 - 1) // s + 1, (5 - 1) // s + 1), np.nan)
        kernels.depthwise_conv_planar(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.ones((3, k, k)),
                                       np.zeros(3), s, False, y)
        assert not np.isnan(y).any()


def test_fast_path_rejects_integer_arrays():
    with pytest.raises(TypeError, match="float32 or float64"):
        fast.layer_norm(np.zeros((2, 3), np.int64), np.ones(3, np.int64), np.zeros(3, np.int64))


# --- the whole model ---------------------------------------------------------------------------
def _max_threads():
    return min(2, numba.config.NUMBA_NUM_THREADS)


@pytest.fixture
def numba_threads():
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_reference_taps(tiny_tensors, tiny_input):
    from refpose.weights import from_tensors
    return from_tensors(tiny_tensors, "tiny", "float64", "reference").taps(tiny_input)


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_float32_model_agrees_with_the_float64_reference(threads, numba_threads, tiny_tensors,
                                                              tiny_input, tiny_reference_taps):
    # The bound: 1e-4 x max|ref| per tap. float32 round-off through ~30 layers stays
    # near 1e-6 relative (seen: < 1e-6), so a wrong kernel, not rounding, is what fails here.
    from refpose.weights import from_tensors
    if threads > _max_threads():
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s) on this machine")
    numba_threads(threads)
    taps = from_tensors(tiny_tensors, "tiny", "float32", "fast").taps(tiny_input)
    for name, want in tiny_reference_taps.items():
        assert taps[name].dtype == np.float32
        err = np.abs(taps[name] - want).max()
        assert err <= 1e-4 * np.abs(want).max(), f"{name}: max error {err:.3g}, max |ref| {np.abs(want).max():.3g}"


def test_fast_float64_model_agrees_with_the_reference(tiny_tensors, tiny_input, tiny_reference_taps):
    # same arithmetic in another order, in float64: ~1e-15 relative (1e-12 is loose)
    from refpose.weights import from_tensors
    got = from_tensors(tiny_tensors, "tiny", "float64", "fast").taps(tiny_input)
    for name, want in tiny_reference_taps.items():
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-12 * np.abs(want).max(), err_msg=name)


def test_results_do_not_depend_on_the_numba_thread_count(numba_threads, tiny_tensors, tiny_input):
    # each kernel output element is computed by one iteration in a fixed order: bitwise equal
    from refpose.weights import from_tensors
    if _max_threads() < 2:
        pytest.skip("needs 2 numba threads")
    if threads.policy().one_thread:
        pytest.skip("the kernels run on one thread in this process (an OpenMP runtime spins)")
    model = from_tensors(tiny_tensors, "tiny", "float32", "fast")
    x = tiny_input.astype(np.float32)
    numba_threads(1)
    one = model(x)
    numba_threads(2)
    np.testing.assert_array_equal(model(x), one)


def test_counting_is_the_same_on_both_paths(tiny_tensors, tiny_input):
    from refpose.weights import from_tensors
    counts = []
    for impl in ("reference", "fast"):
        model = from_tensors(tiny_tensors, "tiny", "float32", impl)
        with refpose.count_ops() as c:
            model(tiny_input[:1])
        counts.append((dict(c.by_kind), dict(c.elementwise)))
    assert counts[0] == counts[1]


def test_wgnet_counted_macs_are_unchanged_on_the_fast_path():
    # DESIGN section 1: wgnet at 1x3x256x192 is 3,590,865,920 MACs (a small input would not do)
    with refpose.count_ops() as c:
        refpose.build("wgnet", impl="fast")(np.zeros((1, 3, 256, 192), np.float32))
    assert c.macs == 3_590_865_920


def test_reference_ops_stay_numpy():
    assert Ops("reference").impl is ref
    assert not Ops("reference").fused


# --- compilation: once per dtype, cached across processes ---------------------------------------
def test_kernels_compile_once_per_dtype(tiny_tensors, tiny_input):
    from refpose.weights import from_tensors
    for dtype in ("float32", "float64"):
        from_tensors(tiny_tensors, "tiny", dtype, "fast")(tiny_input[:1])
    # the parallel kernels a forward runs and their items
    forward = ("_matmul_bias_act", "_attention_block", "_depthwise_conv", "_depthwise_conv_planar",
               "_matmul_item", "_attention_group", "_dw_item", "_dw_planar_item")
    for name in forward:
        f = getattr(kernels, name)
        # the dtype of the first array operand (a parallel kernel's first argument is its item's address)
        dtypes = sorted(str(next(t.dtype for t in sig if isinstance(t, numba.types.Array))) for sig in f.signatures)
        assert dtypes == ["float32", "float64"], f"{name}: compiled for {dtypes}"


CACHE_PROBE = textwrap.dedent("""
    import json, numpy as np, numba, refpose
    from refpose.ops import kernels
    refpose.build("tiny", dtype="float32", impl="fast")(np.zeros((1, 3, 128, 96), np.float32))
    print(json.dumps({name: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                      for name, f in vars(kernels).items()
                      if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures}))
""")


def test_a_second_process_loads_the_kernels_from_the_cache():
    # The first process may compile (if the cache is cold or stale) and writes the cache; the
    # second must find every kernel there: cache hits, no misses.
    runs = [subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, env=dict(os.environ),
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    stats = json.loads(runs[1].stdout.strip().splitlines()[-1])
    # every kernel a forward runs (LayerNorm and attention run inside the fused attention block)
    assert {"_matmul_bias_act", "_attention_block", "_depthwise_conv", "_depthwise_conv_planar",
            "_conv_transpose_scatter"} <= set(stats), sorted(stats)
    for name, (hits, misses) in stats.items():
        assert misses == 0 and hits >= 1, f"{name}: {hits} cache hits, {misses} misses in the second process"


OUTPUT_PROBE = textwrap.dedent("""
    import sys, numpy as np, refpose
    x = np.random.default_rng(0).standard_normal((2, 3, 128, 96)).astype(np.float32)
    np.save(sys.argv[1], refpose.build("tiny", dtype="float32", impl="fast")(x))
""")


def test_a_freshly_compiled_kernel_computes_what_the_cached_one_does(tmp_path):
    # The first process compiles into an empty cache, the second loads from it. The outputs must
    # be identical bit for bit: with `reassoc` LLVM ordered a sum's terms differently in the two
    # builds (~1e-6 apart in float32), so results depended on whether the cache was warm.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.npy"
        r = subprocess.run([sys.executable, "-c", OUTPUT_PROBE, str(out)], capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1]), f"max |diff| {np.abs(outs[0] - outs[1]).max():.3g}"


def test_vector_width_follows_the_target_features():
    assert simd.vector_bytes("+sse4.2,+avx,+avx2,+fma,+avx512f,+avx512bw") == 64
    assert simd.vector_bytes("+avx,+avx2,+fma,-avx512f,-avx512bw") == 32
    assert simd.vector_bytes("+avx,+avx2,+fma,+avx512vnni") == 32        # no AVX-512F, no zmm arithmetic
    assert simd.vector_bytes("") == 32


@njit
def _wide_loop(x):
    simd.full_width_loops()
    for i in range(x.size):
        x[i] = x[i] * 2 + 1


def test_full_width_loops_marks_its_function_only_where_vectors_are_512_bits():
    # The softmax's and the attention block's loops may use 512-bit vectors (a function
    # attribute read by LLVM's vectoriser); on a 256-bit target the attribute is left out. That
    # it changes no result is the vector-width bit test below (AVX2 build against this one).
    x = np.arange(40, dtype=np.float32)
    _wide_loop(x)
    np.testing.assert_array_equal(x, np.arange(40, dtype=np.float32) * 2 + 1)
    ir = _wide_loop.inspect_llvm(_wide_loop.signatures[0])
    assert ('"prefer-vector-width"="512"' in ir) == (simd.VECTOR_BYTES == 64)


def _avx2_features() -> str:
    """This CPU's features with every AVX-512 extension switched off: an AVX2-only CPU."""
    from llvmlite import binding

    host = binding.get_host_cpu_features().flatten().split(",")
    return ",".join("-" + f[1:] if f[1:].startswith("avx512") else f for f in host if f)


AVX2_PROBE = OUTPUT_PROBE + "from refpose.ops import simd; print(simd.VECTOR_BYTES, simd.TILE_ROWS)\n"


def test_the_forward_has_the_same_bits_for_every_vector_width(tmp_path):
    # Kernels compiled for an AVX2-only CPU (256-bit vectors, 4-row tiles) give the bits of the
    # kernels of this machine (512-bit vectors and 8-row tiles where it has AVX-512): every
    # element is the same chain of fused multiply-adds whatever the tile, so a port can check
    # against this oracle on any x86-64 CPU.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), NUMBA_CPU_NAME="haswell",
               NUMBA_CPU_FEATURES=_avx2_features())
    out = tmp_path / "avx2.npy"
    r = subprocess.run([sys.executable, "-c", AVX2_PROBE, str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["32", "4"], r.stdout
    x = np.random.default_rng(0).standard_normal((2, 3, 128, 96)).astype(np.float32)
    here = refpose.build("tiny", dtype="float32", impl="fast")(x)
    avx2 = np.load(out)
    assert np.array_equal(here, avx2), f"max |diff| {np.abs(here - avx2).max():.3g}"


@njit
def _unpacked_matmul(a, a0, lda, ka, R, K, b, b0, N, out):
    kernels._tiles(R, N, K, (a, a0, lda, ka), (b, b0, False), (out, 0), (np.zeros(N, out.dtype), False, out, False),
                   (0, kernels._n_panels(N, simd.vector_lanes(out))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R, K, N", [(1, 1, 1), (3, 5, 7), (4, 4, 4), (9, 13, 6), (32, 48, 48), (19, 32, 53)])
@pytest.mark.parametrize("a_transposed", [False, True])
def test_tiles_read_a_through_its_strides_and_b_in_place(dtype, R, K, N, a_transposed):
    # The attention's in-cache matmuls: B read in place from an offset into a flat buffer, and A
    # either row-major or transposed (the keys' block of the scores, the heads' output for the
    # projection), also from an offset. Against float64 numpy over tiles and edges; TOL covers
    # float32 rounding of sums of at most 48 terms.
    rng = np.random.default_rng(R * 100 + K * 10 + N)
    a, b = rng.standard_normal((R, K)), rng.standard_normal((K, N))
    a_block = a.T if a_transposed else a                       # as stored: (K, R) or (R, K)
    a_flat = np.concatenate([np.full(5, np.nan), a_block.ravel()]).astype(dtype)
    b_flat = np.concatenate([np.full(3, np.nan), b.ravel(), np.full(2, np.nan)]).astype(dtype)
    lda, ka = (1, R) if a_transposed else (K, 1)
    out = np.full(R * N, np.nan, dtype)
    _unpacked_matmul(a_flat, 5, lda, ka, R, K, b_flat, 3, N, out)
    np.testing.assert_allclose(out.reshape(R, N), a @ b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, W, window, patch", [(8, 6, (4, 3), (2, 3)),     # 12 tokens per window, 6 per global group
                                                 (10, 14, (5, 7), (5, 7)),   # 35 tokens; global groups of 4
                                                 (4, 6, (4, 6), (4, 6))])    # 24 tokens; global groups of 1
def test_fused_attention_kernel_takes_token_counts_that_are_not_whole_vectors(dtype, H, W, window, patch):
    # the kernel itself (not the op, which would take it anyway) against the ops one by one:
    # token counts past the last whole vector go through the tiles' edges, with the same bits
    rng = np.random.default_rng(6)
    N, C, heads = 2, 32, 2
    x = 2 * uniform(rng, (N, H, W, C), dtype)
    nw, nb = uniform(rng, C, dtype), uniform(rng, C, dtype)
    qw, qb, pw, pb = (uniform(rng, shape, dtype) / 4 for shape in ((3 * C, C), 3 * C, (C, C), C))
    dt = np.dtype(dtype)
    for kind in ("window", "global"):
        pix = np.ascontiguousarray(geometry.token_pixels(N, H, W, kind, window, patch), np.intp)
        y = np.full((N * H * W, C), np.nan, dtype)
        kernels.attention_block(np.ascontiguousarray(x).reshape(-1, C), pix, (nw, nb, dt.type(1e-5)),
                                (np.ascontiguousarray(qw).reshape(-1), qb), heads,
                                (fast._panels(pw, "oi", pw, dt), pb), y)
        qkv = fast.linear(fast.layer_norm(x, nw, nb, 1e-5), qw, qb)
        unfused = fast.linear(fast.grouped_attention(qkv, heads, kind, window, patch), pw, pb, residual=x)
        np.testing.assert_array_equal(y.reshape(N, H, W, C), unfused)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["window", "global"])
@pytest.mark.parametrize("C, heads", [(24, 3), (20, 2)])
def test_fused_attention_block_is_the_unfused_ops_bit_for_bit(kind, dtype, C, heads):
    # x + proj(MHSA(group(qkv(LN(x))))): the one-kernel block and the ops one by one give the
    # same bits (the LayerNorm's sums in the same order, 20 channels leaving 4 past the eight
    # lanes; tiles that compute an element the same wherever it lies), and both agree with the
    # float64 reference.
    rng = np.random.default_rng(5)
    N, H, W, window, patch = 2, 16, 12, (8, 6), (4, 3)       # 4 windows of 48 tokens per image
    x = 2 * uniform(rng, (N, H, W, C), dtype)
    nw, nb = uniform(rng, C, dtype), uniform(rng, C, dtype)            # LN output within [-2, 2]
    qw, qb, pw, pb = (uniform(rng, shape, dtype) / 4 for shape in ((3 * C, C), 3 * C, (C, C), C))   # scores ~1
    args = (x, nw, nb, 1e-5, qw, qb, heads, kind, window, patch, pw, pb)
    fused = fast.attention_block(*args)
    qkv = fast.linear(fast.layer_norm(x, nw, nb, 1e-5), qw, qb)
    unfused = fast.linear(fast.grouped_attention(qkv, heads, kind, window, patch), pw, pb, residual=x)
    np.testing.assert_array_equal(fused, unfused)
    f64 = lambda a: a.astype(np.float64)
    t = ref.linear(ref.layer_norm(f64(x), f64(nw), f64(nb), 1e-5), f64(qw), f64(qb))
    want = f64(x) + ref.linear(ref.grouped_attention(t, heads, kind, window, patch), f64(pw), f64(pb))
    assert_close(fused, want, dtype)
