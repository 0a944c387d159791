"""Integer semantics (refpose.quant.qdq) against cases computed by hand from ONNX's definitions."""
import numpy as np
import pytest

from refpose.errors import InputShapeError, WeightsError
from refpose.quant import qdq


def test_rounding_ties_go_to_even():
    # x / 1 = +-0.5, +-1.5, +-2.5 -> 0, 2, 2 (and their negatives), then + 10
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49, 0.51], np.float32)
    got = qdq.quantize_linear(x, 1.0, 10)
    assert got.tolist() == [10, 10, 12, 8, 12, 8, 10, 11]


def test_saturation_at_both_ends_uint8_and_int8():
    x = np.array([-1000, -3, 0, 254.4, 300, 1e30], np.float32)
    assert qdq.quantize_linear(x, 1.0, 0).tolist() == [0, 0, 0, 254, 255, 255]
    assert qdq.quantize_linear(x, 1.0, 0, np.int8).tolist() == [-128, -3, 0, 127, 127, 127]


def test_zero_point_and_scale():
    # scale 0.5, zero point 128: 1.0 -> 2 + 128, -1.0 -> -2 + 128, 0.25 / 0.5 = 0.5 -> 0 (even) + 128
    x = np.array([1.0, -1.0, 0.25, 0.75], np.float32)
    assert qdq.quantize_linear(x, 0.5, 128).tolist() == [130, 126, 128, 130]
    q = np.array([130, 126, 128, 0, 255], np.uint8)
    assert qdq.dequantize_linear(q, 0.5, 128).tolist() == [1.0, -1.0, 0.0, -64.0, 63.5]


def test_division_is_float32():
    # 0.3 / 0.1 in float32 is 3.0000002 -> 3; the float64 quotient of the float32 values is 2.9999999...
    assert qdq.quantize_linear(np.float32(0.3), np.float32(0.1), 0) == 3


def test_requantize_rounds_the_float32_product_half_to_even():
    acc = np.array([5, 15, 25, -5, 1000, -1000], np.int32)
    # times float32(0.1) = 0.10000000149: 5 x that = 0.50000000745, which rounds to 0.5 in float32
    # (its neighbours are 6e-8 apart), so ties to even gives 0, not 1 as a float64 product would;
    # 15 -> 1.5 -> 2, 25 -> 2.5 -> 2, -5 -> -0.5 -> 0; 1000 -> 100 + 100; -1000 saturates at 0
    assert qdq.requantize(acc, np.float32(0.1), 100).tolist() == [100, 102, 102, 100, 200, 0]
    assert np.rint(5 * np.float64(np.float32(0.1))) == 1
    # exact halves: 1 * 0.5, 3 * 0.5, 5 * 0.5 -> 0, 2, 2
    assert qdq.requantize(np.array([1, 3, 5], np.int32), np.float32(0.5), 0).tolist() == [0, 2, 2]


def test_relu6_bounds_are_the_codes_of_0_and_6():
    assert qdq.relu6_bounds(np.float32(0.05), 10) == (10, 130)   # 6 / 0.05 = 120
    assert qdq.relu6_bounds(np.float32(6 / 255), 0) == (0, 255)


def test_weights_symmetric_per_output_channel():
    w = np.array([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0], [2.54, 1.27, -0.01]], np.float32)
    q, s = qdq.quantize_weights(w)
    assert s.tolist() == pytest.approx([0.01, 1.0, 0.02], rel=1e-6)
    assert q.tolist() == [[50, -127, 0], [0, 0, 0], [127, 64, 0]]   # 1.27 / 0.02 = 63.5 -> 64 (even)
    assert q.dtype == np.int8 and q.min() >= -127


def test_bias_quantized_with_the_product_of_scales():
    b = np.array([1.0, -0.3], np.float32)
    assert qdq.quantize_bias(b, 0.5, np.array([0.01, 0.1], np.float32)).tolist() == [200, -6]


def test_params_from_range_hold_zero():
    s, z = qdq.params_from_range(-1.0, 3.0)          # 4 / 255, zero at 1 / (4/255) = 63.75 -> 64
    assert s == np.float32(4 / 255) and z == 64
    s, z = qdq.params_from_range(0.5, 2.0)           # widened to [0, 2]
    assert s == np.float32(2 / 255) and z == 0
    assert qdq.params_from_range(0.0, 0.0) == (1.0, 0)


def test_multiplier_rounds_once():
    m = qdq.multiplier(np.float32(0.1), np.float32(0.2), divide_by=np.float32(0.3))
    want = np.float32(np.float64(np.float32(0.1)) * np.float64(np.float32(0.2)) / np.float64(np.float32(0.3)))
    assert m == want and m.dtype == np.float32


def test_nan_and_inf_refused_at_the_boundary():
    with pytest.raises(InputShapeError, match="NaN or infinity"):
        qdq.check_finite(np.array([1.0, np.nan], np.float32))
    with pytest.raises(InputShapeError):
        qdq.check_finite(np.array([np.inf], np.float32))


@pytest.mark.parametrize("bad", [0.0, -0.1, np.nan, np.inf])
def test_bad_scales_refused(bad):
    with pytest.raises(WeightsError, match="positive and finite"):
        qdq.check_scale(np.array([0.1, bad], np.float32))
