"""The person crop (refpose/pose/crop.py): boxes, the affine, the warp, the normalisation.

Expected values are worked by hand from the conventions (HRNet / MMPose) or come from closed
forms (the similarity transform of a box) — never from the code under test.
"""
import numpy as np
import pytest

from refpose.errors import BoxError
from refpose.pose.crop import affine_points, box_to_center_scale, check_box, crop_person, get_affine_transform, normalize


# --- boxes -----------------------------------------------------------------------------------------
def test_box_to_center_scale_hand_worked():
    # tall box: 30 < 0.75 * 80, so the width grows to 60; then x 1.25
    c, s = box_to_center_scale([10, 20, 30, 80], 192 / 256)
    np.testing.assert_allclose(c, [25, 60], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, [75, 100], rtol=0, atol=1e-12)
    # wide box: 100 > 0.75 * 50, so the height grows to 100 / 0.75
    c, s = box_to_center_scale([0, 0, 100, 50], 0.75)
    np.testing.assert_allclose(c, [50, 25], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, [125, 125 / 0.75], rtol=0, atol=1e-12)


@pytest.mark.parametrize("box, problem", [
    ([10, 10, 0, 20], "zero area"), ([10, 10, 20, -1], "zero area"),
    ([100, 10, 20, 20], "outside"), ([-30, 10, 30, 20], "outside"), ([10, 80, 5, 5], "outside"),
    ([np.nan, 0, 5, 5], "not finite")])
def test_check_box_rejects(box, problem):
    with pytest.raises(BoxError, match=problem):
        check_box(box, (80, 100))          # image 100 wide, 80 high


def test_check_box_accepts_a_box_partly_outside():
    np.testing.assert_array_equal(check_box([-5, -5, 20, 20], (80, 100)), [-5, -5, 20, 20])


# --- affine crop -----------------------------------------------------------------------------------
def test_affine_matches_the_similarity_of_the_box():
    # closed form for rotation 0: x' = k (x - cx) + W/2, y' = k (y - cy) + H/2 with k = W / scale_w
    center, scale = np.array([123.4, 567.8]), np.array([300.0, 400.0])
    M = get_affine_transform(center, scale, (256, 192))
    k = 192 / 300
    expected = np.array([[k, 0, 96 - k * 123.4], [0, k, 128 - k * 567.8]])
    np.testing.assert_allclose(M, expected, rtol=0, atol=1e-9)   # float64 solve of a 3x3 system


def test_affine_round_trip_within_1e6_px():
    rng = np.random.default_rng(0)
    for _ in range(20):
        center = rng.uniform(-100, 2000, 2)
        scale = rng.uniform(5, 3000) * np.array([0.75, 1.0])
        M = get_affine_transform(center, scale, (256, 192))
        M_inv = get_affine_transform(center, scale, (256, 192), inv=True)
        pts = rng.uniform(-500, 2500, (50, 2))
        back = affine_points(affine_points(pts, M), M_inv)
        assert np.abs(back - pts).max() < 1e-6          # the bound; float64 gives ~1e-12


def test_crop_moves_an_impulse_where_the_affine_says():
    # scale equal to the output size: a pure integer translation, so warpAffine copies pixels exactly
    image = np.zeros((300, 400, 3), np.uint8)
    image[150, 230] = (255, 10, 20)
    center, scale = (200.0, 140.0), (192.0, 256.0)      # output pixel (u, v) = image (u + 104, v + 12)
    crop = crop_person(image, center, scale, (256, 192))
    assert crop.shape == (256, 192, 3)
    ys, xs = np.nonzero(crop.any(axis=2))
    assert (ys.tolist(), xs.tolist()) == ([138], [126])
    assert crop[138, 126].tolist() == [255, 10, 20]


def test_crop_samples_the_image_at_the_inverse_affine():
    # a linear ramp: bilinear sampling reproduces it, so crop(u, v) = ramp(M_inv (u, v))
    H, W = 400, 500
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = 20 + 0.3 * xx + 0.2 * yy                                  # 20 .. 249.5
    image = np.repeat(np.round(ramp)[..., None], 3, axis=2).astype(np.uint8)
    center, scale = np.array([251.3, 198.7]), np.array([213.0, 284.0])
    crop = crop_person(image, center, scale, (256, 192)).astype(np.float64)
    M_inv = get_affine_transform(center, scale, (256, 192), inv=True)
    v, u = np.mgrid[0:256, 0:192]
    x, y = np.moveaxis(affine_points(np.stack([u, v], axis=-1), M_inv), -1, 0)
    inside = (x >= 1) & (x <= W - 2) & (y >= 1) & (y <= H - 2)
    assert inside.mean() > 0.9
    # 1 grey level: the stored ramp is rounded (0.5) and the crop is rounded again (0.5);
    # OpenCV's 1/32-pixel sample positions add at most (0.3 + 0.2) / 32
    assert np.abs(crop[..., 0][inside] - (20 + 0.3 * x + 0.2 * y)[inside]).max() <= 1.0 + 0.5 / 32


def test_normalize_is_imagenet_statistics_in_nchw():
    crops = np.zeros((1, 2, 3, 3), np.uint8)
    crops[0, 1, 2] = (255, 128, 0)
    x = normalize(crops)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 1, 2], expected, rtol=1e-6)   # float32
    np.testing.assert_allclose(x[0, 0, 0, 0], -0.485 / 0.229, rtol=1e-6)
