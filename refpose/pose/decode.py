"""Heatmaps to keypoints: the argmax with a quarter-pixel shift or DARK, the flip test's
flip-back, and the instance score.

HRNet (`lib/core/inference.py`) and MMPose 1.x (`mmpose/codecs/msra_heatmap.py`,
`mmpose/codecs/utils/refinement.py`), so that the numbers compare with theirs.
"""
from __future__ import annotations

import numpy as np

from ..keypoints import COCO

KPT_SCORE_THR = 0.2        # joints counted in the instance score (HRNet `IN_VIS_THRE`, MMPose `vis_thr`)


DARK_KERNEL = 11           # DARK's blur for heatmaps of sigma 2: k = 6 sigma - 1 (MMPose `blur_kernel_size`)


def get_heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of each heatmap: locations (N, K, 2) as (x, y) and maxima (N, K).

    A heatmap whose maximum is not positive has no detection: location -1 (MMPose
    `get_heatmap_maximum`).
    """
    N, K, h, w = heatmaps.shape
    flat = heatmaps.reshape(N, K, h * w)                       # (N, K, h*w)
    idx = flat.argmax(axis=2)
    vals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    locs = np.stack([idx % w, idx // w], axis=-1).astype(np.float64)   # (N, K, 2)
    locs[vals <= 0] = -1
    return locs, vals


def _sample(heatmaps: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """heatmaps[n, k, iy[n, k], ix[n, k]] for every (n, k); indices are clamped to the map."""
    N, K, h, w = heatmaps.shape
    n, k = np.meshgrid(np.arange(N), np.arange(K), indexing="ij")
    return heatmaps[n, k, np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]


def refine_quarter(locs: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Move each argmax a quarter pixel toward its higher neighbour, per axis.

    HRNet `get_final_preds`, MMPose `refine_keypoints` with MMPose's border conditions:
    x moves only when 1 < x < W-1 and 0 < y, y only when 1 < y < H-1 and 0 < x.
    """
    N, K, h, w = heatmaps.shape
    x, y = locs[..., 0].astype(int), locs[..., 1].astype(int)
    dx = _sample(heatmaps, x + 1, y) - _sample(heatmaps, x - 1, y)
    dy = _sample(heatmaps, x, y + 1) - _sample(heatmaps, x, y - 1)
    dx = np.where((x > 1) & (x < w - 1) & (y > 0), dx, 0.0)
    dy = np.where((y > 1) & (y < h - 1) & (x > 0), dy, 0.0)
    return locs + 0.25 * np.stack([np.sign(dx), np.sign(dy)], axis=-1)


def dark_blur(heatmaps: np.ndarray, kernel: int = DARK_KERNEL) -> np.ndarray:
    """DARK's modulation: Gaussian blur with zeros beyond the map, rescaled to the original maximum.

    Zhang et al. 2020 (DARK), section 3.1; MMPose `gaussian_blur`. The kernel is OpenCV's for size
    `kernel` and sigma 0 (sigma = 0.3 ((k - 1)/2 - 1) + 0.8 = 2 for k = 11), applied separably.
    """
    import cv2

    N, K, h, w = heatmaps.shape
    g = cv2.getGaussianKernel(kernel, 0)[:, 0].astype(np.float64)
    r = kernel // 2
    p = np.pad(heatmaps.astype(np.float64), ((0, 0), (0, 0), (r, r), (r, r)))   # (N, K, h+2r, w+2r)
    rows = sum(g[i] * p[:, :, i:i + h, :] for i in range(kernel))              # (N, K, h, w+2r)
    out = sum(g[i] * rows[:, :, :, i:i + w] for i in range(kernel))            # (N, K, h, w)
    origin_max = heatmaps.reshape(N, K, -1).max(axis=2)
    blurred_max = out.reshape(N, K, -1).max(axis=2)
    ok = (origin_max > 0) & (blurred_max > 0)
    factor = np.where(ok, origin_max / np.where(ok, blurred_max, 1.0), 1.0)
    return out * factor[:, :, None, None]


def refine_dark(locs: np.ndarray, heatmaps: np.ndarray, kernel: int = DARK_KERNEL) -> np.ndarray:
    """DARK (Zhang et al. 2020, section 3.1): a Newton step on the log of the blurred heatmap at the argmax.

    offset = -H^-1 g with central differences (first derivatives over 2 pixels, second over 4),
    as in MMPose `refine_keypoints_dark`; applied where 1 < x < W-2, 1 < y < H-2 and det H != 0.
    """
    N, K, h, w = heatmaps.shape
    logh = np.log(np.maximum(dark_blur(heatmaps, kernel), 1e-10))
    x, y = locs[..., 0].astype(int), locs[..., 1].astype(int)

    def at(ox, oy):
        return _sample(logh, x + ox, y + oy)

    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (det != 0)
    det = np.where(ok, det, 1.0)
    off_x = -(dyy * dx - dxy * dy) / det            # -(H^-1 g), H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_y = -(dxx * dy - dxy * dx) / det
    return locs + np.where(ok[..., None], np.stack([off_x, off_y], axis=-1), 0.0)


def decode_heatmaps(heatmaps: np.ndarray, dark: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) -> keypoints (N, K, 2) in heatmap pixels and scores (N, K) = maxima."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    locs, scores = get_heatmap_maximum(heatmaps)
    locs = refine_dark(locs, heatmaps) if dark else refine_quarter(locs, heatmaps)
    return locs, scores


def flip_back(heatmaps: np.ndarray, flip_index=COCO.flip_index, shift: bool = True) -> np.ndarray:
    """Heatmaps of mirrored crops (N, K, h, w) -> heatmaps in the frame of the original crops.

    Mirror each map, give joint k the map of its mirror joint, and shift one pixel to the
    right (HRNet `flip_back` + `SHIFT_HEATMAP`, MMPose `flip_heatmaps(shift_heatmap=True)`):
    the crop's mirror axis is at W/2 in input pixels (the box centre), the array's at W/2 - 1/2.
    """
    out = heatmaps[:, list(flip_index), :, ::-1].copy()       # (N, K, h, w)
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def instance_score(keypoint_scores: np.ndarray, box_score: float = 1.0, thr: float = KPT_SCORE_THR) -> float:
    """Box score x mean of the keypoint scores above `thr` (0 when none is): HRNet and MMPose
    rescoring (`TopDownCocoDataset.evaluate`)."""
    s = np.asarray(keypoint_scores, dtype=np.float64)
    s = s[s > thr]
    return float(box_score) * float(s.mean()) if s.size else 0.0
