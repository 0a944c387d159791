"""Heatmap decoding (refpose/pose/decode.py): argmax with the quarter shift, DARK, flip-back,
the instance score. Expected values come from Gaussians placed at known sub-pixel positions or
are worked by hand."""
import numpy as np
import pytest

from refpose.keypoints import COCO
from refpose.pose.decode import decode_heatmaps, flip_back, instance_score

COCO_KEYPOINTS, FLIP_INDEX = COCO.names, COCO.flip_index

SIGMA = 2.0      # the Gaussian of MMPose's 256x192 COCO targets (and of DARK's blur for kernel 11)


SIGMA = 2.0      # the Gaussian of MMPose's 256x192 COCO targets (and of DARK's blur for kernel 11)


def gaussians(centres: np.ndarray, size=(64, 48), sigma=SIGMA) -> np.ndarray:
    """Heatmaps (N, h, w) with a unit Gaussian at each (x, y) of `centres` (N, 2)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = centres[:, 0, None, None], centres[:, 1, None, None]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


# --- decoding ---------------------------------------------------------------------------------------
def random_centres(n, rng, size=(64, 48), margin=4):
    h, w = size
    return np.stack([rng.uniform(margin, w - 1 - margin, n), rng.uniform(margin, h - 1 - margin, n)], axis=-1)


def test_argmax_with_quarter_shift_within_quarter_pixel():
    rng = np.random.default_rng(1)
    centres = random_centres(17 * 20, rng)
    hm = gaussians(centres).reshape(20, 17, 64, 48)
    coords, scores = decode_heatmaps(hm)
    err = np.abs(coords.reshape(-1, 2) - centres)
    # the argmax is within 1/2 px of the centre and the shift of 1/4 px goes its way: |error| <= 1/4
    assert err.max() <= 0.25 + 1e-12
    # score = the heatmap's maximum = the Gaussian at the nearest pixel
    nearest = np.round(centres)
    expected = np.exp(-((nearest - centres) ** 2).sum(axis=1) / (2 * SIGMA ** 2))
    np.testing.assert_allclose(scores.reshape(-1), expected, rtol=1e-12)


def test_dark_within_005_pixel():
    rng = np.random.default_rng(2)
    centres = random_centres(17 * 20, rng)
    hm = gaussians(centres).reshape(20, 17, 64, 48)
    coords, _ = decode_heatmaps(hm, dark=True)
    assert np.abs(coords.reshape(-1, 2) - centres).max() <= 0.05       # the bound


def test_quarter_shift_hand_worked():
    hm = np.zeros((1, 2, 8, 8))
    hm[0, 0, 3, 4], hm[0, 0, 3, 5], hm[0, 0, 2, 4] = 1.0, 0.5, 0.2      # higher neighbours right and up
    hm[0, 1, 5, 1], hm[0, 1, 5, 2] = 1.0, 0.9                          # x = 1: MMPose does not move x
    coords, scores = decode_heatmaps(hm)
    np.testing.assert_array_equal(coords[0], [[4.25, 2.75], [1.0, 5.0]])
    np.testing.assert_array_equal(scores[0], [1.0, 1.0])


def test_non_positive_heatmap_has_no_location():
    hm = -np.ones((1, 1, 6, 6))
    hm[0, 0, 2, 3] = -0.5
    coords, scores = decode_heatmaps(hm)
    np.testing.assert_array_equal(coords[0, 0], [-1, -1])             # MMPose: location -1
    assert scores[0, 0] == -0.5


def test_flip_back_hand_worked():
    hm = np.zeros((1, 17, 2, 5))
    hm[0, 5, 1, 1] = 1.0          # left shoulder, column 1 of 5
    hm[0, 0, 0, 4] = 2.0          # nose, last column
    out = flip_back(hm)
    expected = np.zeros_like(hm)
    expected[0, 6, 1, 4] = 1.0    # right shoulder: column 5 - 1 - 1 = 3, shifted right to 4
    expected[0, 0, 0, 0] = 2.0    # nose: column 0 after mirroring; the shift copies it to column 1 ...
    expected[0, 0, 0, 1] = 2.0    # ... and column 0 keeps its value (HRNet's in-place shift)
    np.testing.assert_array_equal(out, expected)


def test_flip_index_swaps_left_and_right():
    for k, name in enumerate(COCO_KEYPOINTS):
        mirror = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert COCO_KEYPOINTS[FLIP_INDEX[k]] == mirror


def test_instance_score_hand_worked():
    s = np.array([0.1, 0.2, 0.3, 0.5, 0.9] + [0.0] * 12)
    assert instance_score(s, 0.8) == pytest.approx(0.8 * (0.3 + 0.5 + 0.9) / 3, rel=1e-15)
    assert instance_score(np.full(17, 0.2)) == 0.0      # strictly above 0.2, as HRNet and MMPose
