"""OKS-NMS (refpose/pose/nms.py): OKS against pycocotools' own, and which poses survive."""

import numpy as np
import pytest

from refpose.keypoints import COCO
from refpose.pose.nms import oks_iou, oks_nms

pytest.importorskip("pycocotools", reason="the OKS reference is pycocotools'")
from pycocotools.cocoeval import COCOeval  # noqa: E402

from coco_files import UNIT_POSE  # noqa: E402


# --- OKS-NMS --------------------------------------------------------------------------------

def test_oks_iou_matches_pycocotools_oks():
    """With every keypoint labelled and equal areas, MMPose's OKS is COCO's OKS."""
    rng = np.random.default_rng(3)
    g = np.concatenate([rng.uniform(0, 100, (17, 2)), np.full((17, 1), 2.0)], axis=1)
    d = g[None] + np.concatenate([rng.normal(0, 3, (5, 17, 2)), np.zeros((5, 17, 1))], axis=2)
    area = 5000.0
    ours = oks_iou(g, d, area, np.full(5, area))
    ev = COCOeval(iouType="keypoints")
    ev._gts = {(1, 1): [{"keypoints": g.ravel().tolist(), "area": area, "bbox": [0, 0, 100, 100]}]}
    ev._dts = {(1, 1): [{"keypoints": p.ravel().tolist(), "score": 1.0 - i / 10} for i, p in enumerate(d)]}
    ev.params.maxDets = [20]
    theirs = ev.computeOks(1, 1)[:, 0]
    # ours is rounded to float32 as in MMPose: agreement to float32 precision
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_oks_nms_keeps_the_best_of_duplicates_and_distinct_poses():
    base = np.concatenate([UNIT_POSE * [80, 200] + [10, 10], np.ones((17, 1))], axis=1)
    poses = np.stack([base, base + [0.5, 0.5, 0], base + [300, 0, 0], base + [1, 0, 0]])
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    areas = np.full(4, 80 * 200.0)
    # poses 0, 1, 3 are the same person (OKS ~ 1 > 0.9); pose 2 is another, far away
    assert oks_nms(poses, scores, areas) == [1, 2]


def test_oks_nms_suppresses_above_the_threshold_only():
    """A pose at OKS 0.85 to a better one survives, one at 0.95 is suppressed (threshold 0.9)."""
    base = np.concatenate([UNIT_POSE * [80, 200], np.ones((17, 1))], axis=1)
    area = 16000.0
    var = (2 * COCO.oks_sigmas) ** 2
    # a shift d_k per keypoint with exp(-d^2 / (var * area * 2)) = t gives OKS t
    def shifted(t):
        p = base.copy()
        p[:, 0] += np.sqrt(-np.log(t) * var * area * 2)
        return p
    poses = np.stack([base, shifted(0.85), shifted(0.95)])
    assert oks_nms(poses, np.array([1.0, 0.5, 0.4]), np.full(3, area)) == [0, 1]
