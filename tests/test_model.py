"""The model (refpose/model.py): shapes, dtypes, input checks, taps and batch independence.

Expected shapes are DESIGN section 1's table (and the tiny config's, worked out from its
stage table: total stride 4 after the stem, x2 down at s2..s4, x2 up at d1..d3).
"""
import numpy as np
import pytest

import refpose
from refpose import InputShapeError

TAP_ORDER = ["stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "head"]


@pytest.fixture(scope="module")
def tiny64():
    return refpose.build("tiny", seed=0, dtype="float64", impl="reference")


@pytest.fixture(scope="module")
def tiny32():
    return refpose.build("tiny", seed=0, dtype="float32", impl="reference")


def images(n, H=128, W=96, dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, H, W)).astype(dtype)


# --- output shape and dtype ----------------------------------------------------------------------
@pytest.mark.parametrize("N", [1, 3])
def test_output_shape(tiny32, N):
    # (N, 17, H/4, W/4) at the tiny input 128x96
    y = tiny32(images(N, dtype=np.float32))
    assert y.shape == (N, 17, 32, 24)
    assert np.isfinite(y).all()


def test_output_shape_at_another_input_size(tiny32):
    # 256x96: every tiny window still divides its map (s1 64x24 by 8x6, s3 16x6 by 4x3,
    # s4 8x3 by 8x6 clamped to 8x3, d1 16x6 by 8x6, d3 64x24 by 16x12)
    y = tiny32(images(1, 256, 96, np.float32))
    assert y.shape == (1, 17, 64, 24)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_flows_through(impl, dtype):
    model = refpose.build("tiny", seed=0, dtype=dtype, impl=impl)
    taps = model.taps(images(1, dtype=np.dtype(dtype)))    # model(x) is taps(x)["head"], tested below
    assert {k: t.dtype for k, t in taps.items()} == {k: np.dtype(dtype) for k in TAP_ORDER}


def test_float32_and_float64_paths_agree(tiny32, tiny64):
    # the same weights in both dtypes; float32 rounds each op at 6e-8 relative, and through
    # the ~40 layers of tiny that grows to ~1e-6 of the heatmaps' scale: 1e-4 leaves 100x room
    x = images(1)
    y64, y32 = tiny64(x), tiny32(x.astype(np.float32))
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-4 * np.abs(y64).max())


def test_model_call_is_the_head_tap(tiny64):
    x = images(2)
    np.testing.assert_array_equal(tiny64(x), tiny64.taps(x)["head"])


def test_input_is_not_modified(tiny64):
    x = images(1)
    x0 = x.copy()
    tiny64(x)
    np.testing.assert_array_equal(x, x0)


# --- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, says", [
    ((3, 128, 96), "(N, 3, H, W)"),             # not 4-D
    ((1, 1, 3, 128, 96), "(N, 3, H, W)"),
    ((1, 4, 128, 96), "(N, 3, H, W)"),          # RGBA
    ((1, 1, 128, 96), "(N, 3, H, W)"),
    ((1, 3, 120, 96), "multiple of 32"),        # H not a multiple of the total stride
    ((1, 3, 128, 100), "multiple of 32"),
    ((1, 3, 160, 96), "stage s2"),              # a multiple of 32, but s2's 20x12 map is not cut by 8x6 windows
    ((0, 3, 128, 96), "at least one"),
])
def test_bad_input_shapes_name_the_expected_shape(tiny32, shape, says):
    with pytest.raises(InputShapeError) as e:
        tiny32(np.zeros(shape, np.float32))
    assert isinstance(e.value, ValueError)
    assert says in str(e.value)
    if shape[0] != 0:
        assert "(N, 3, H, W)" in str(e.value)      # the expected shape...
    if len(shape) != 4 or shape[1] != 3:
        assert str(shape) in str(e.value)         # ...and what it got


def test_non_float_input_is_rejected(tiny32):
    with pytest.raises(InputShapeError, match="float"):
        tiny32(np.zeros((1, 3, 128, 96), np.uint8))


def test_input_shape_error_is_a_value_error():
    assert issubclass(refpose.InputShapeError, ValueError)
    assert issubclass(refpose.InputShapeError, refpose.RefposeError)


# --- taps --------------------------------------------------------------------------------------
def test_taps_tiny(tiny32):
    # tiny, 128x96 in: stem 16 ch at /4; s1 32 ch /4, s2 64 /8, s3 64 /16, s4 96 /32;
    # d1 64 /16, d2 32 /8, d3 32 /4; head 17 /4
    taps = tiny32.taps(images(2, dtype=np.float32))
    assert list(taps) == TAP_ORDER == list(refpose.TAPS)
    assert {k: v.shape for k, v in taps.items()} == {
        "stem": (2, 16, 32, 24), "s1": (2, 32, 32, 24), "s2": (2, 64, 16, 12), "s3": (2, 64, 8, 6),
        "s4": (2, 96, 4, 3), "d1": (2, 64, 8, 6), "d2": (2, 32, 16, 12), "d3": (2, 32, 32, 24),
        "head": (2, 17, 32, 24)}


@pytest.mark.slow
def test_taps_wgnet_follow_the_design_table():
    # DESIGN section 1, input 256x192: map and C per stage
    model = refpose.build("wgnet", seed=0, impl="reference")
    taps = model.taps(np.zeros((1, 3, 256, 192), np.float32))
    assert list(taps) == TAP_ORDER
    assert {k: v.shape[1:] for k, v in taps.items()} == {
        "stem": (32, 64, 48), "s1": (96, 64, 48), "s2": (160, 32, 24), "s3": (192, 16, 12),
        "s4": (256, 8, 6), "d1": (192, 16, 12), "d2": (160, 32, 24), "d3": (96, 64, 48),
        "head": (17, 64, 48)}


# --- batch independence ------------------------------------------------------------------------
def test_batch_independence(tiny64):
    # image i of a batch gives the same heatmaps as image i alone. float64: BLAS may block a
    # batch differently from a single image, so sums are reordered -- round-off of ~1e-15
    # relative per op, well below 1e-10 of the output scale after ~40 layers
    x = images(3, seed=2)
    batch = tiny64(x)
    scale = np.abs(batch).max()
    for i in range(3):
        np.testing.assert_allclose(batch[i], tiny64(x[i:i + 1])[0], rtol=0, atol=1e-10 * scale)
    # and the images really differ (so a broadcast of one image's result would fail above)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3 * scale


@pytest.mark.parametrize("config", ["tiny", pytest.param("wgnet", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_images_heatmaps_do_not_depend_on_its_batch(config, dtype):
    """The fast path computes an image the same wherever it lies in a batch and whatever else is
    in it, bit for bit: the records of a run do not depend on how images were grouped."""
    model = refpose.build(config, seed=0, dtype=dtype)
    H, W = model.config.input_size
    x = np.random.default_rng(5).standard_normal((3, 3, H, W))
    together = model(x)
    for i in range(3):
        np.testing.assert_array_equal(model(x[i:i + 1]), together[i:i + 1])
    np.testing.assert_array_equal(model(x[[2, 0]]), together[[2, 0]])
