"""Temporal smoothing of keypoints in a video: a One-Euro filter per keypoint of each tracked person.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cutoff
rises with speed: still joints are steadied, fast ones are not held back. For a sample x at
time t, te = t - t_prev:

    alpha(fc) = r / (r + 1),  r = 2 pi fc te
    dx_hat    = alpha(d_cutoff) (x - x_hat_prev) / te + (1 - alpha(d_cutoff)) dx_hat_prev
    fc        = min_cutoff + beta |dx_hat|
    x_hat     = alpha(fc) x + (1 - alpha(fc)) x_hat_prev

applied to each coordinate of each keypoint on its own. As in MMPose's `OneEuroFilter`
(`mmpose/core/post_processing/temporal_filters/one_euro_filter.py`), time is counted in frames
(te = 1 between consecutive frames, te = N with `--every N`), so the cutoffs are in cycles per
frame and speeds in pixels per frame; the defaults are MMPose's: min_cutoff 0.004, beta 0.7,
d_cutoff 1.0. A lower min_cutoff steadies still joints more; a higher beta lets fast ones lag less.

Persons are tracked between consecutive processed frames by box IoU: pairs are matched greedily,
highest IoU first, when their IoU is at least `iou_thr`; an unmatched box starts a new track
(its first frame passes unfiltered) and a track not seen in the previous frame ends.
"""
from __future__ import annotations

import math

import numpy as np

MIN_CUTOFF = 0.004       # MMPose OneEuroFilter defaults (cycles per frame)
BETA = 0.7
D_CUTOFF = 1.0
TRACK_IOU = 0.3          # least box IoU for the same person in consecutive frames


def smoothing_factor(te: float, cutoff):
    """alpha = r / (r + 1), r = 2 pi cutoff te: the weight of the new sample in an exponential smoother."""
    r = 2 * math.pi * cutoff * te
    return r / (r + 1)


class OneEuroFilter:
    """One-Euro filter of an array of values (e.g. keypoints (K, 2)), each element on its own."""

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x_prev = self.dx_prev = self.t_prev = None

    def __call__(self, x, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x_prev is None:                         # the first sample starts the filter at rest
            self.x_prev, self.dx_prev, self.t_prev = x, np.zeros_like(x), float(t)
            return x
        te = float(t) - self.t_prev
        if te <= 0:
            raise ValueError(f"One-Euro filter: time must increase, got {t} after {self.t_prev}")
        a_d = smoothing_factor(te, self.d_cutoff)
        dx_hat = a_d * (x - self.x_prev) / te + (1 - a_d) * self.dx_prev
        a = smoothing_factor(te, self.min_cutoff + self.beta * np.abs(dx_hat))
        x_hat = a * x + (1 - a) * self.x_prev
        self.x_prev, self.dx_prev, self.t_prev = x_hat, dx_hat, float(t)
        return x_hat


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of COCO boxes a (N, 4) and b (M, 4), each x, y, w, h."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None]     # (N, 1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None]        # (1, M, 4)
    w = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(prev: np.ndarray, boxes: np.ndarray, iou_thr: float = TRACK_IOU) -> dict[int, int]:
    """Greedy matching {index in boxes: index in prev}, highest IoU first, IoU >= iou_thr."""
    iou = box_iou(boxes, prev)                                       # (len(boxes), len(prev))
    pairs = sorted(((iou[i, j], i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1])
                    if iou[i, j] >= iou_thr), reverse=True)
    matched, used = {}, set()
    for _, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched


class PoseSmoother:
    """Tracks persons from frame to frame and smooths each one's keypoints with its own One-Euro filter.

    `smoother(poses, t)` takes the poses of one frame (dicts with `bbox` and `keypoints` (K, 3),
    as `refpose.pose.pipeline.estimate` returns) at time t in frames, and returns them with x, y
    smoothed (scores unchanged) and a `track_id`.
    """

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF,
                 iou_thr: float = TRACK_IOU):
        self.params = (min_cutoff, beta, d_cutoff)
        self.iou_thr = iou_thr
        self.tracks: list[tuple[int, np.ndarray, OneEuroFilter]] = []     # (id, box, filter) of the last frame
        self.next_id = 0

    def __call__(self, poses: list[dict], t: float) -> list[dict]:
        boxes = np.array([p["bbox"] for p in poses], dtype=np.float64).reshape(-1, 4)
        prev = np.array([box for _, box, _ in self.tracks], dtype=np.float64).reshape(-1, 4)
        matched = match_boxes(prev, boxes, self.iou_thr)
        tracks, out = [], []
        for i, pose in enumerate(poses):
            if i in matched:
                track_id, _, f = self.tracks[matched[i]]
            else:
                track_id, f = self.next_id, OneEuroFilter(*self.params)
                self.next_id += 1
            kpts = np.array(pose["keypoints"], dtype=np.float64)           # (K, 3)
            kpts[:, :2] = f(kpts[:, :2], t)
            tracks.append((track_id, boxes[i], f))
            out.append({**pose, "keypoints": kpts, "track_id": track_id})
        self.tracks = tracks
        return out
