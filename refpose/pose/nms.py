"""OKS-NMS: greedy non-maximum suppression of poses by object keypoint similarity.

MMPose `core/post_processing/nms.py` (from HRNet `lib/nms/nms.py`): the top-down protocol
runs it per image at 0.9 after rescoring, so that two boxes on one person give one pose.
"""
from __future__ import annotations

import numpy as np

from ..keypoints import COCO

OKS_NMS_THR = 0.9          # MMPose / HRNet `oks_thr`


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray,
            sigmas: np.ndarray = COCO.oks_sigmas) -> np.ndarray:
    """Object keypoint similarity of one pose `g` (K, 3) to poses `d` (N, K, 3).

    MMPose `oks_iou` (from HRNet): the COCO OKS with the mean of the two areas as the scale
    and every keypoint counted, in float32 as there.
    """
    var = (2 * sigmas) ** 2                                           # (K,)
    d2 = (d[:, :, 0] - g[:, 0]) ** 2 + (d[:, :, 1] - g[:, 1]) ** 2    # (N, K)
    e = d2 / var / ((area_g + area_d[:, None]) / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(axis=1).astype(np.float32)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            thr: float = OKS_NMS_THR, sigmas: np.ndarray = COCO.oks_sigmas) -> list[int]:
    """Greedy NMS on OKS: indices of the poses kept, best score first.

    MMPose `oks_nms` (HRNet `nms/nms.py`): take the best remaining pose, drop every pose
    whose OKS to it exceeds `thr`, repeat.
    """
    order = np.asarray(scores).argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        ovr = oks_iou(keypoints[i], keypoints[order[1:]], areas[i], areas[order[1:]], sigmas)
        order = order[1:][ovr <= thr]
    return keep
