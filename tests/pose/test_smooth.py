"""Tests of temporal smoothing (refpose/smooth.py): the One-Euro formula, box tracking."""
import math

import numpy as np
import pytest

from refpose.pose.smooth import OneEuroFilter, PoseSmoother, box_iou, match_boxes


def one_euro_by_hand(xs, ts, min_cutoff, beta, d_cutoff):
    """Casiez et al. 2012, written out for a scalar signal."""
    def alpha(cutoff, te):
        tau = 1.0 / (2 * math.pi * cutoff)          # the paper's form: 1 / (1 + tau / te)
        return 1.0 / (1.0 + tau / te)

    out = [xs[0]]
    x_hat, dx_hat, t_prev = xs[0], 0.0, ts[0]
    for x, t in zip(xs[1:], ts[1:]):
        te = t - t_prev
        a_d = alpha(d_cutoff, te)
        dx_hat = a_d * (x - x_hat) / te + (1 - a_d) * dx_hat
        a = alpha(min_cutoff + beta * abs(dx_hat), te)
        x_hat = a * x + (1 - a) * x_hat
        t_prev = t
        out.append(x_hat)
    return np.array(out)


@pytest.mark.parametrize("params", [(0.004, 0.7, 1.0), (1.0, 0.0, 1.0), (0.5, 0.05, 2.0)])
def test_one_euro_matches_the_formula(params):
    rng = np.random.default_rng(0)
    xs = np.cumsum(rng.standard_normal(40) * 5) + 100          # a wandering coordinate in pixels
    ts = np.cumsum(rng.integers(1, 4, 40)).astype(float)       # uneven steps, as with --every
    f = OneEuroFilter(*params)
    got = np.array([f(np.array([x, -x]), t) for x, t in zip(xs, ts)])   # two elements filtered independently
    expected = one_euro_by_hand(xs, ts, *params)
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-12)       # same float64 arithmetic, reordered
    np.testing.assert_allclose(got[:, 1], -expected, rtol=1e-12)


def test_one_euro_steadies_jitter_and_follows_a_step():
    rng = np.random.default_rng(1)
    f = OneEuroFilter()                                        # MMPose's defaults
    # sub-pixel jitter (0.05 px): the cutoff stays near min_cutoff and the jitter is damped
    noisy = 50 + 0.05 * rng.standard_normal(200)
    out = np.array([f(x, t) for t, x in enumerate(noisy)])
    assert out[20:].std() < 0.5 * noisy[20:].std()
    # a jump of 100 px: the speed opens the cutoff and the output follows within a frame
    assert abs(f(150.0, 200) - 150.0) < 1.0
    with pytest.raises(ValueError, match="time must increase"):
        f(1.0, 10)


def test_box_iou_and_greedy_matching():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 10, 10], [100, 100, 5, 5], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])
    # box 0 now overlaps old box 1 best; box 1 has no partner above 0.3 -> unmatched
    prev = np.array([[0, 0, 10, 10], [20, 0, 10, 10]])
    now = np.array([[21, 0, 10, 10], [60, 0, 10, 10], [1, 0, 10, 10]])
    assert match_boxes(prev, now) == {0: 1, 2: 0}


def pose(box, xy):
    kpts = np.zeros((17, 3))
    kpts[:, :2] = xy
    kpts[:, 2] = 0.9
    return {"bbox": box, "keypoints": kpts, "score": 0.5}


def test_smoother_keeps_identities_through_order_changes():
    s = PoseSmoother(min_cutoff=1.0, beta=0.0, d_cutoff=1.0)
    a0, b0 = pose([0, 0, 10, 20], 5.0), pose([100, 0, 10, 20], 105.0)
    first = s([a0, b0], 0)
    assert [p["track_id"] for p in first] == [0, 1]
    np.testing.assert_array_equal(first[0]["keypoints"], a0["keypoints"])     # first frame passes through
    # next frame: listed the other way round, each moved by 2 px; a third person appears
    b1, a1, c1 = pose([102, 0, 10, 20], 107.0), pose([2, 0, 10, 20], 7.0), pose([300, 0, 10, 20], 300.0)
    second = s([b1, a1, c1], 1)
    assert [p["track_id"] for p in second] == [1, 0, 2]
    alpha = 2 * math.pi / (2 * math.pi + 1)                     # r / (r + 1), r = 2 pi * 1 * 1
    np.testing.assert_allclose(second[1]["keypoints"][:, :2], alpha * 7.0 + (1 - alpha) * 5.0)
    np.testing.assert_allclose(second[0]["keypoints"][:, :2], alpha * 107.0 + (1 - alpha) * 105.0)
    np.testing.assert_array_equal(second[2]["keypoints"][:, :2], 300.0)       # new track: unfiltered
    np.testing.assert_array_equal(second[1]["keypoints"][:, 2], 0.9)          # scores untouched
