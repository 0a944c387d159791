"""The reference ops (refpose/ops/reference.py) against their definitions.

Every op is compared with a deliberately naive implementation written here from the op's
defining formula: explicit Python loops over output elements, in float64, on small sizes.
Impulse tests (a single 1 in a zero map, distinct weights) show where each tap lands, and a
few hand-worked values pin the conventions (biased variance, cross-correlation, PyTorch
padding k//2). Nothing expected here is computed by the code under test.
"""
import math

import numpy as np
import pytest

from refpose.ops import Ops, reference as ref

# Tolerances, one per dtype. The naive oracle works in float64 on the same (exactly
# representable) inputs, so the difference is the op's own round-off. Inputs are uniform in
# [-1, 1] and no sum here has more than 75 terms: in float64 (unit round-off 1.1e-16) the
# error stays below ~1e-14, so 1e-12 is loose; in float32 (unit round-off 6e-8) a random-walk
# accumulation of 75 terms with partial sums of a few units gives ~3e-6, so 1e-5.
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def uniform(rng, shape, dtype):
    return rng.uniform(-1, 1, shape).astype(dtype)


def assert_matches(got, want, dtype):
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {np.dtype(dtype)} (the dtype flows through)"
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def out_size(n, k, s):
    """PyTorch Conv2d with padding k//2: floor((n + 2*(k//2) - k) / s) + 1."""
    return (n + 2 * (k // 2) - k) // s + 1


# --- naive implementations, one output element at a time ----------------------------------
def naive_conv2d(x, w, b, stride, groups=1):
    """y[n, oh, ow, co] = b[co] + sum_{i, j, ci in co's group} x[n, oh*s + i - k//2, ow*s + j - k//2, ci] w[co, ci', i, j],
    zero outside the map (Conv2d, padding k//2, PyTorch weight layout (Cout, Cin/groups, k, k))."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, H, W, Cin = x.shape
    Cout, cin_g, kh, kw = w.shape
    cout_g = Cout // groups
    Ho, Wo = out_size(H, kh, stride), out_size(W, kw, stride)
    y = np.zeros((N, Ho, Wo, Cout))
    for n in range(N):
        for oh in range(Ho):
            for ow in range(Wo):
                for co in range(Cout):
                    acc = 0.0 if b is None else float(b[co])
                    g = co // cout_g
                    for i in range(kh):
                        for j in range(kw):
                            h, v = oh * stride + i - kh // 2, ow * stride + j - kw // 2
                            if not (0 <= h < H and 0 <= v < W):
                                continue                      # zero padding
                            for c in range(cin_g):
                                acc += x[n, h, v, g * cin_g + c] * w[co, c, i, j]
                    y[n, oh, ow, co] = acc
    return y


def naive_conv_transpose2d(x, w, b, stride):
    """ConvTranspose2d, padding 0, written as its scatter definition:
    every input pixel (h, v) adds x[n, h, v, ci] w[ci, co, a, c] to y[n, h*s + a, v*s + c, co]."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, H, W, Cin = x.shape
    _, Cout, kh, kw = w.shape
    y = np.zeros((N, (H - 1) * stride + kh, (W - 1) * stride + kw, Cout))
    for n in range(N):
        for h in range(H):
            for v in range(W):
                for ci in range(Cin):
                    for co in range(Cout):
                        for a in range(kh):
                            for c in range(kw):
                                y[n, h * stride + a, v * stride + c, co] += x[n, h, v, ci] * w[ci, co, a, c]
    if b is not None:
        for co in range(Cout):
            y[..., co] += float(b[co])
    return y


def naive_linear(x, w, b):
    """y[..., o] = b[o] + sum_i x[..., i] w[o, i]."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    rows = x.reshape(-1, x.shape[-1])
    y = np.zeros((rows.shape[0], w.shape[0]))
    for r in range(rows.shape[0]):
        for o in range(w.shape[0]):
            y[r, o] = (0.0 if b is None else float(b[o])) + sum(rows[r, i] * w[o, i] for i in range(w.shape[1]))
    return y.reshape(*x.shape[:-1], w.shape[0])


def naive_layer_norm(x, weight, bias, eps=1e-5):
    """torch.nn.LayerNorm over the last axis: biased variance (divide by C), eps inside the root."""
    x = x.astype(np.float64)
    rows = x.reshape(-1, x.shape[-1])
    C = rows.shape[1]
    y = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        mean = sum(rows[r]) / C
        var = sum((rows[r, c] - mean) ** 2 for c in range(C)) / C
        for c in range(C):
            y[r, c] = (rows[r, c] - mean) / math.sqrt(var + eps) * float(weight[c]) + float(bias[c])
    return y.reshape(x.shape)


def naive_attention_one(q, keys, values):
    """One query against T keys: sum_u softmax_u(q.k_u / sqrt(d)) v_u (Vaswani et al. 2017, Eq. 1)."""
    d = len(q)
    scores = [sum(float(q[e]) * float(k[e]) for e in range(d)) / math.sqrt(d) for k in keys]
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return np.array([sum(e[u] / z * float(values[u][c]) for u in range(len(values)))
                     for c in range(len(values[0]))])


def naive_attention(q, k, v):
    """(..., T, d) -> (..., T, d), one query at a time."""
    lead = q.shape[:-2]
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for idx in np.ndindex(*lead):
        for t in range(q.shape[-2]):
            out[idx + (t,)] = naive_attention_one(q[idx + (t,)], list(k[idx]), list(v[idx]))
    return out


def group_of(h, w, kind, window, patch):
    """The group of pixel (h, w), straight from DESIGN section 1: window attention groups a
    window; global attention groups patch k of every window, so the group is the patch's
    position inside its window."""
    (wh, ww), (ph, pw) = window, patch
    if kind == "window":
        return h // wh, w // ww
    return (h % wh) // ph, (w % ww) // pw


def naive_grouped_attention(qkv, heads, kind, window, patch):
    """For each pixel and head: attention of its query over the keys/values of every pixel of
    its group (same image). qkv channels are [q; k; v], heads contiguous (Swin/timm)."""
    N, H, W, C3 = qkv.shape
    C = C3 // 3
    d = C // heads
    out = np.zeros((N, H, W, C))
    for n in range(N):
        for h in range(H):
            for w in range(W):
                g = group_of(h, w, kind, window, patch)
                members = [(a, b) for a in range(H) for b in range(W) if group_of(a, b, kind, window, patch) == g]
                for hd in range(heads):
                    q = qkv[n, h, w, hd * d:(hd + 1) * d]
                    keys = [qkv[n, a, b, C + hd * d:C + (hd + 1) * d] for a, b in members]
                    values = [qkv[n, a, b, 2 * C + hd * d:2 * C + (hd + 1) * d] for a, b in members]
                    out[n, h, w, hd * d:(hd + 1) * d] = naive_attention_one(q, keys, values)
    return out


def naive_squeeze_excite(x, w1, b1, w2, b2):
    """SE (Hu et al. 2018): s_c = mean_HW x; z = relu(W1 s + b1); g = sigmoid(W2 z + b2); y = x g."""
    x = x.astype(np.float64)
    N, H, W, C = x.shape
    R = w1.shape[0]
    y = np.zeros_like(x)
    for n in range(N):
        s = [sum(x[n, h, w, c] for h in range(H) for w in range(W)) / (H * W) for c in range(C)]
        z = [max(0.0, float(b1[r]) + sum(float(w1[r, c, 0, 0]) * s[c] for c in range(C))) for r in range(R)]
        g = [1 / (1 + math.exp(-(float(b2[c]) + sum(float(w2[c, r, 0, 0]) * z[r] for r in range(R)))))
             for c in range(C)]
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    y[n, h, w, c] = x[n, h, w, c] * g[c]
    return y


# --- output size: PyTorch's formula, worked by hand --------------------------------------------
@pytest.mark.parametrize("n, k, s, expected", [
    (7, 3, 1, 7), (7, 3, 2, 4), (6, 3, 2, 3), (5, 5, 1, 5), (5, 5, 2, 3), (7, 5, 2, 4),
    (1, 3, 1, 1), (1, 3, 2, 1), (1, 5, 2, 1), (2, 5, 2, 1), (256, 5, 2, 128), (4, 1, 2, 2)])
def test_output_size_is_pytorchs(n, k, s, expected):
    # floor((n + 2*(k//2) - k) / s) + 1, evaluated by hand in the table above
    x = np.zeros((1, n, n, 1))
    assert ref.depthwise_conv2d(x, np.ones((1, 1, k, k)), None, s).shape == (1, expected, expected, 1)
    assert ref.conv2d(x, np.ones((1, 1, k, k)), None, s).shape == (1, expected, expected, 1)


# --- conv2d ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, stride", [(1, 1), (1, 2), (3, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("H, W", [(7, 5), (1, 1), (4, 6)])
def test_conv2d_matches_definition(H, W, k, stride, dtype):
    rng = np.random.default_rng(0)
    x, w, b = uniform(rng, (2, H, W, 3), dtype), uniform(rng, (4, 3, k, k), dtype), uniform(rng, (4,), dtype)
    assert_matches(ref.conv2d(x, w, b, stride), naive_conv2d(x, w, b, stride), dtype)


def test_conv2d_without_bias():
    rng = np.random.default_rng(1)
    x, w = uniform(rng, (1, 5, 4, 2), np.float64), uniform(rng, (3, 2, 3, 3), np.float64)
    assert_matches(ref.conv2d(x, w, None, 1), naive_conv2d(x, w, None, 1), np.float64)


# --- depthwise conv --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("N, H, W", [(2, 7, 5), (1, 1, 1), (3, 8, 6), (1, 2, 3)])
def test_depthwise_conv2d_matches_definition(N, H, W, stride, k, dtype):
    rng = np.random.default_rng(2)
    C = 3
    x, w, b = uniform(rng, (N, H, W, C), dtype), uniform(rng, (C, 1, k, k), dtype), uniform(rng, (C,), dtype)
    got = ref.depthwise_conv2d(x, w, b, stride)
    assert got.shape == (N, out_size(H, k, stride), out_size(W, k, stride), C)
    assert_matches(got, naive_conv2d(x, w, b, stride, groups=C), dtype)


def distinct_kernel(C, k):
    """w[c, 0, i, j] = 1 + 100 c + 10 i + j: every tap has its own value."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(k), np.arange(k), indexing="ij")
    return (1 + 100 * c + 10 * i + j)[:, None].astype(np.float64)


@pytest.mark.parametrize("k", [3, 5])
def test_depthwise_impulse_at_the_centre_gives_the_rotated_kernel(k):
    # cross-correlation: a 1 at the centre of a k x k map is read by output (k-1-i, k-1-j)
    # through tap (i, j), so the output is the kernel turned by 180 degrees, channel by channel
    C = 2
    x = np.zeros((1, k, k, C))
    x[0, k // 2, k // 2, :] = 1
    w = distinct_kernel(C, k)
    y = ref.depthwise_conv2d(x, w, None, 1)
    for c in range(C):
        np.testing.assert_array_equal(y[0, :, :, c], w[c, 0, ::-1, ::-1])


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_impulse_every_tap_lands_where_it_should(k, stride):
    # a 1 at (r, c) of a 7x6 map reaches output (oh, ow) through tap (i, j) exactly when
    # oh*s + i - k//2 = r and ow*s + j - k//2 = c; every other output is 0
    C, H, W, r, c = 2, 7, 6, 3, 2
    x = np.zeros((1, H, W, C))
    x[0, r, c, :] = 1
    w = distinct_kernel(C, k)
    y = ref.depthwise_conv2d(x, w, None, stride)
    want = np.zeros_like(y)
    p = k // 2
    for i in range(k):
        for j in range(k):
            if (r + p - i) % stride or (c + p - j) % stride:
                continue
            oh, ow = (r + p - i) // stride, (c + p - j) // stride
            if 0 <= oh < y.shape[1] and 0 <= ow < y.shape[2]:
                want[0, oh, ow, :] = w[:, 0, i, j]
    assert np.count_nonzero(want) > 0
    np.testing.assert_array_equal(y, want)


def test_depthwise_stride2_impulse_by_hand():
    # 3x3 kernel, stride 2, a 1 at (2, 2) of a 5x5 map; output 3x3 with output pixel (o, o')
    # centred on input (2o, 2o'). Only output (1, 1) covers (2, 2), through the centre tap.
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = 1
    w = distinct_kernel(1, 3)
    y = ref.depthwise_conv2d(x, w, None, 2)[0, :, :, 0]
    want = np.zeros((3, 3))
    want[1, 1] = w[0, 0, 1, 1]          # 12
    np.testing.assert_array_equal(y, want)
    # a 1 at (1, 1) is seen by outputs (0, 0) via tap (2, 2) and (1, 1) via tap (0, 0), etc.
    x[...] = 0
    x[0, 1, 1, 0] = 1
    y = ref.depthwise_conv2d(x, w, None, 2)[0, :, :, 0]
    want = np.array([[23, 21, 0], [3, 1, 0], [0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(y, want)


# --- transposed conv -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, H, W", [(2, 3, 4), (1, 1, 1), (3, 2, 3)])
def test_conv_transpose2d_matches_definition(N, H, W, dtype):
    rng = np.random.default_rng(3)
    x, w, b = uniform(rng, (N, H, W, 4), dtype), uniform(rng, (4, 3, 2, 2), dtype), uniform(rng, (3,), dtype)
    got = ref.conv_transpose2d(x, w, b, 2)
    assert got.shape == (N, 2 * H, 2 * W, 3)
    assert_matches(got, naive_conv_transpose2d(x, w, b, 2), dtype)


def test_conv_transpose2d_impulse():
    # a 1 in input channel 1 at (1, 2) of a 3x4 map writes w[1, co] (2x2) to rows 2..3,
    # columns 4..5 of output channel co, and nothing else (layout (Cin, Cout, kh, kw))
    Cin, Cout = 2, 3
    x = np.zeros((1, 3, 4, Cin))
    x[0, 1, 2, 1] = 1
    w = np.arange(1, Cin * Cout * 4 + 1, dtype=np.float64).reshape(Cin, Cout, 2, 2)
    y = ref.conv_transpose2d(x, w, None, 2)
    want = np.zeros((1, 6, 8, Cout))
    for co in range(Cout):
        want[0, 2:4, 4:6, co] = w[1, co]
    np.testing.assert_array_equal(y, want)


def test_conv_transpose2d_rejects_kernel_other_than_stride():
    with pytest.raises(ValueError, match="kernel"):
        ref.conv_transpose2d(np.zeros((1, 2, 2, 1)), np.zeros((1, 1, 3, 3)), None, 2)


# --- linear ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_definition(dtype, with_bias):
    rng = np.random.default_rng(4)
    x, w = uniform(rng, (2, 3, 5), dtype), uniform(rng, (4, 5), dtype)
    b = uniform(rng, (4,), dtype) if with_bias else None
    assert_matches(ref.linear(x, w, b), naive_linear(x, w, b), dtype)


def test_linear_by_hand():
    # y = x W^T + b with W (out, in) = [[1, 2], [3, 4], [5, 6]], x = [1, -1], b = [0, 1, 2]
    y = ref.linear(np.array([[1.0, -1.0]]), np.array([[1.0, 2], [3, 4], [5, 6]]), np.array([0.0, 1, 2]))
    np.testing.assert_array_equal(y, [[-1, 0, 1]])


# --- layer norm ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_definition(dtype):
    rng = np.random.default_rng(5)
    x = (uniform(rng, (2, 3, 4, 8), dtype) * 3 + 1).astype(dtype)
    g, b = uniform(rng, (8,), dtype), uniform(rng, (8,), dtype)
    assert_matches(ref.layer_norm(x, g, b), naive_layer_norm(x, g, b), dtype)


def test_layer_norm_uses_the_biased_variance_and_eps_1e5():
    # row [1, 2, 3, 4]: mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # (the unbiased one would be 5/3); eps 1e-5 inside the square root
    y = ref.layer_norm(np.array([[1.0, 2, 3, 4]]), np.ones(4), np.zeros(4))
    want = np.array([[-1.5, -0.5, 0.5, 1.5]]) / math.sqrt(1.25 + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-15, atol=0)   # a few float64 operations
    # a constant row has zero variance: eps keeps it finite and the output is the bias
    y = ref.layer_norm(np.full((1, 4), 7.0), np.full(4, 2.0), np.array([0.5, -1, 0, 3]))
    np.testing.assert_array_equal(y, [[0.5, -1, 0, 3]])


# --- softmax ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one_and_shift_invariant(dtype):
    rng = np.random.default_rng(6)
    x = (uniform(rng, (4, 5, 7), dtype) * 10).astype(dtype)
    p = ref.softmax(x)
    assert p.dtype == dtype
    assert (p > 0).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=0, atol=TOL[dtype])
    # adding a constant to a row leaves softmax unchanged (exactly, in exact arithmetic;
    # x + 3 rounds x to the dtype's grid near 13, so allow the dtype's tolerance)
    np.testing.assert_allclose(ref.softmax((x + 3).astype(dtype)), p, rtol=TOL[dtype] * 10, atol=TOL[dtype])


def test_softmax_by_hand():
    # softmax([0, ln 3]) = [1, 3] / 4
    np.testing.assert_allclose(ref.softmax(np.array([0.0, math.log(3)])), [0.25, 0.75], rtol=1e-15)
    # along axis 0 it is the transpose of the row-wise one
    x = np.random.default_rng(7).standard_normal((3, 4))
    np.testing.assert_array_equal(ref.softmax(x, axis=0), ref.softmax(x.T).T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_does_not_overflow(dtype):
    # exp(1e4) overflows in both dtypes; subtracting the row maximum first avoids it
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4 - math.log(2)], [-1e4, -1e4, -1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = ref.softmax(x)
    assert np.isfinite(p).all()
    # row 2 is [1, 1, 1/2] / 2.5 by hand. In float32, 1e4 - ln 2 is rounded to the grid of
    # 2^-10 near 1e4, an error of up to 5e-4 in the exponent and so ~1e-4 in p; float64: round-off
    atol = {np.float32: 1e-4, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(p, [[1, 0, 0], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3]], rtol=0, atol=atol)


# --- attention -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_matches_definition(dtype):
    rng = np.random.default_rng(8)
    q, k, v = (uniform(rng, (2, 3, 5, 4), dtype) * 2 for _ in range(3))
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    assert_matches(ref.attention(q, k, v), naive_attention(q, k, v), dtype)


def test_attention_by_hand():
    # a zero query weighs every key alike: the output is the mean of the values
    k = np.random.default_rng(9).standard_normal((4, 2))
    v = np.array([[1.0, 0], [3, 0], [5, 2], [7, 2]])
    out = ref.attention(np.zeros((1, 2)), k, v)
    np.testing.assert_allclose(out, [[4.0, 1.0]], rtol=1e-15)
    # scores are scaled by d^-0.5: with d = 4, q.k = 2 ln 3 against q.k = 0 gives weights 3:1
    q = np.array([[2 * math.log(3), 0, 0, 0]])
    k = np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    v = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    np.testing.assert_allclose(ref.attention(q, k, v), [[0.75, 0.25, 0, 0]], rtol=1e-15, atol=1e-16)


# grouped attention: (N, H, W, C, heads, kind, window, patch)
GROUPED_CASES = [
    (2, 8, 6, 8, 2, "window", (4, 3), (4, 3)),     # 4 windows of 12 tokens
    (2, 8, 6, 8, 2, "global", (4, 3), (2, 1)),     # 6 groups of 2*2 windows * 2 pixels = 8 tokens
    (1, 8, 6, 8, 2, "global", (4, 3), (1, 1)),     # MaxViT grid: 12 groups of 4 tokens
    (2, 8, 6, 8, 2, "global", (4, 3), (4, 3)),     # one patch per window: one group of the whole map
    (1, 4, 3, 8, 1, "window", (4, 3), (4, 3)),     # the window is the whole map
    (3, 1, 1, 8, 2, "window", (1, 1), (1, 1)),     # 1x1 map: a single token attends to itself
    (1, 4, 6, 12, 3, "global", (2, 3), (1, 3)),    # 3 heads
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, H, W, C, heads, kind, window, patch", GROUPED_CASES)
def test_grouped_attention_matches_definition(N, H, W, C, heads, kind, window, patch, dtype):
    rng = np.random.default_rng(10)
    qkv = (uniform(rng, (N, H, W, 3 * C), dtype) * 2).astype(dtype)
    got = ref.grouped_attention(qkv, heads, kind, window, patch)
    assert_matches(got, naive_grouped_attention(qkv, heads, kind, window, patch), dtype)


def test_grouped_attention_single_token_returns_its_value():
    # softmax over one key is 1: the output is v itself
    qkv = np.random.default_rng(11).standard_normal((2, 1, 1, 3 * 8))
    out = ref.grouped_attention(qkv, 2, "window", (1, 1), (1, 1))
    np.testing.assert_array_equal(out, qkv[..., 16:])


def test_global_groups_mix_only_patches_at_the_same_place():
    # 4x8 map, 2x4 windows, 1x2 patches: pixel (0, 0) shares a group exactly with
    # (0, 1), (0, 4), (0, 5), (2, 0), (2, 1), (2, 4), (2, 5) -- the 1x2 patch (0, 0) of each of
    # the four windows. Putting all the "value" mass on one pixel shows who sees it.
    N, H, W, C = 1, 4, 8, 2
    qkv = np.zeros((N, H, W, 3 * C))            # zero queries and keys: uniform weights in each group
    qkv[0, 2, 5, 2 * C:] = 8.0                  # value 8 at pixel (2, 5) only
    out = ref.grouped_attention(qkv, 1, "global", (2, 4), (1, 2))[0, :, :, 0]
    seen = {(h, w) for h in range(H) for w in range(W) if out[h, w] != 0}
    assert seen == {(0, 0), (0, 1), (0, 4), (0, 5), (2, 0), (2, 1), (2, 4), (2, 5)}
    np.testing.assert_allclose(out[0, 0], 8.0 / 8, rtol=1e-15)   # one of 8 equally weighted tokens


# --- squeeze-excite --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_squeeze_excite_matches_definition(dtype):
    rng = np.random.default_rng(12)
    C, R = 8, 2
    x = uniform(rng, (2, 3, 5, C), dtype)
    w1, b1 = uniform(rng, (R, C, 1, 1), dtype), uniform(rng, (R,), dtype)
    w2, b2 = uniform(rng, (C, R, 1, 1), dtype), uniform(rng, (C,), dtype)
    assert_matches(ref.squeeze_excite(x, w1, b1, w2, b2), naive_squeeze_excite(x, w1, b1, w2, b2), dtype)


def test_squeeze_excite_by_hand():
    # zero weights: the gate is sigmoid(b2); b2 = 0 halves the map, b2 = ln 3 scales it by 3/4
    x = np.random.default_rng(13).standard_normal((1, 2, 2, 2))
    y = ref.squeeze_excite(x, np.zeros((1, 2, 1, 1)), np.zeros(1), np.zeros((2, 1, 1, 1)), np.array([0.0, math.log(3)]))
    np.testing.assert_allclose(y, x * np.array([0.5, 0.75]), rtol=1e-15)


# --- the Ops wrapper -------------------------------------------------------------------------
def test_ops_rejects_an_unknown_implementation():
    with pytest.raises(ValueError, match="reference"):
        Ops("numpy")


def test_ops_relu6_clips_to_0_6():
    ops = Ops("reference")
    x = np.array([-3.0, 0.5, 7.0]).reshape(1, 1, 1, 3)
    y = ops.conv(x, np.eye(3).reshape(3, 3, 1, 1), None, relu6=True)
    np.testing.assert_array_equal(y.ravel(), [0, 0.5, 6])


def test_ops_grouped_attention_rejects_a_window_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        Ops("reference").grouped_attention(np.zeros((1, 8, 6, 6)), 1, "window", (3, 6), (1, 1))


# --- a second, independent reference: PyTorch (optional) ------------------------------------
@pytest.mark.torch
def test_ops_agree_with_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is an optional second reference")
    F = torch.nn.functional
    rng = np.random.default_rng(14)

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def nhwc(t):
        return t.numpy().transpose(0, 2, 3, 1)

    x = rng.standard_normal((2, 7, 5, 4))
    for k, s in [(3, 1), (3, 2), (5, 2)]:
        w = rng.standard_normal((4, 1, k, k))
        want = nhwc(F.conv2d(nchw(x), torch.from_numpy(w), stride=s, padding=k // 2, groups=4))
        np.testing.assert_allclose(ref.depthwise_conv2d(x, w, None, s), want, rtol=1e-12, atol=1e-12)
        w = rng.standard_normal((3, 4, k, k))
        want = nhwc(F.conv2d(nchw(x), torch.from_numpy(w), stride=s, padding=k // 2))
        np.testing.assert_allclose(ref.conv2d(x, w, None, s), want, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal((4, 3, 2, 2))
    want = nhwc(F.conv_transpose2d(nchw(x), torch.from_numpy(w), stride=2))
    np.testing.assert_allclose(ref.conv_transpose2d(x, w, None, 2), want, rtol=1e-12, atol=1e-12)
    g, b = rng.standard_normal(4), rng.standard_normal(4)
    want = F.layer_norm(torch.from_numpy(x), (4,), torch.from_numpy(g), torch.from_numpy(b), eps=1e-5).numpy()
    np.testing.assert_allclose(ref.layer_norm(x, g, b), want, rtol=1e-12, atol=1e-12)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) for _ in range(3))
    want = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v))).numpy()
    np.testing.assert_allclose(ref.attention(q, k, v), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_add_sums_into_the_fresh_operand_and_leaves_the_other(impl):
    # The residual sum reuses the branch's output; the skip or input map must stay as it was.
    rng = np.random.default_rng(5)
    x, fresh = rng.standard_normal((2, 3, 5, 4)).astype(np.float32), rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    x_before, expected = x.copy(), x.astype(np.float64) + fresh.astype(np.float64)
    out = Ops(impl).add(x, fresh)
    assert out is fresh
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_allclose(out, expected, rtol=1e-7, atol=0)   # one float32 rounding of an exact sum
