"""Training targets: MSRA Gaussian heatmaps and per-joint target weights.

MMPose `MSRAHeatmap(unbiased=False)` / `generate_gaussian_heatmaps` (from HRNet
`JointsDataset.generate_target`): each labelled joint becomes an unnormalised Gaussian of
`sigma` heatmap pixels (peak 1) centred on the heatmap pixel nearest to the joint, cut to a
(6 sigma + 1)-pixel square and to the heatmap. A joint's weight is 1 when it is labelled
(COCO visibility 1 or 2) and its square overlaps the heatmap, else 0; a weight-0 joint has
an all-zero map and does not count in the loss.
"""
from __future__ import annotations

import numpy as np

SIGMA = 2.0          # heatmap pixels at 64x48 (HRNet, MMPose `sigma=2`)


def heatmap_targets(keypoints: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int],
                    stride: float, sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (K, h, w) float32 and target weights (K,) float32 of one person.

    keypoints: (K, 2) x, y in network-input pixels; visible: (K,) bool (labelled joints);
    heatmap_size: (h, w); stride: input pixels per heatmap pixel (4 for WGNet). The joint
    at input pixel x lands at heatmap x / stride, rounded to the nearest pixel centre.
    """
    h, w = heatmap_size
    K = len(keypoints)
    heatmaps = np.zeros((K, h, w), dtype=np.float32)
    weights = np.asarray(visible, dtype=np.float32).copy()
    radius = int(3 * sigma)
    g = np.arange(2 * radius + 1, dtype=np.float32) - radius
    gaussian = np.exp(-(g[None, :] ** 2 + g[:, None] ** 2) / (2 * sigma ** 2))   # (2r+1, 2r+1)
    for k in range(K):
        if weights[k] == 0 or not np.isfinite(keypoints[k]).all():
            weights[k] = 0
            continue
        mx, my = (int(v) for v in np.floor(keypoints[k] / stride + 0.5))    # nearest pixel
        left, top, right, bottom = mx - radius, my - radius, mx + radius + 1, my + radius + 1
        if left >= w or top >= h or right <= 0 or bottom <= 0:
            weights[k] = 0                       # the whole Gaussian is off the heatmap
            continue
        x1, x2, y1, y2 = max(0, left), min(w, right), max(0, top), min(h, bottom)
        heatmaps[k, y1:y2, x1:x2] = gaussian[y1 - top:y2 - top, x1 - left:x2 - left]
    return heatmaps, weights
