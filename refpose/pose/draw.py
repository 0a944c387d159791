"""Pictures of the results: the skeleton drawn on the image, and a montage of heatmaps.

Images are RGB uint8 (H, W, 3) in and out; `encode_png` turns one into PNG bytes.
The skeleton is the dataset's (refpose.keypoints, chosen by the number of joints): for COCO
the 19 links of the person category (`skeleton` in the COCO keypoint annotations, 1-based
there, 0-based here); colours follow MMPose's COCO palette: green for the left side, orange
for the right, blue for the centre.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..keypoints import COCO, Keypoints, for_joints
from .crop import crop_person

LEFT, RIGHT, CENTRE = (0, 255, 0), (255, 128, 0), (51, 153, 255)   # RGB
BOX_COLOUR = (255, 255, 255)


def _side(k: int, keypoints: Keypoints = COCO):
    name = keypoints.names[k]
    return LEFT if name.startswith("left") else RIGHT if name.startswith("right") else CENTRE


def _link_colour(a: int, b: int, keypoints: Keypoints = COCO):
    sa, sb = _side(a, keypoints), _side(b, keypoints)
    return sa if sa == sb else CENTRE


def draw_poses(image: np.ndarray, poses: list[dict], kpt_thr: float = 0.3, boxes: bool = True) -> np.ndarray:
    """A copy of `image` with each person's box, skeleton links and joints drawn.

    Joints whose score is below `kpt_thr` are hidden, and so is every link that touches one.
    Line widths grow with the image, so that the drawing reads the same at any size.
    """
    out = np.ascontiguousarray(image.copy())
    H, W = out.shape[:2]
    thick = max(1, round(max(H, W) / 300))
    radius = max(2, round(max(H, W) / 200))
    for p in poses:
        kpts = np.asarray(p["keypoints"], dtype=np.float64)         # (K, 3)
        kp = for_joints(len(kpts))
        if boxes:
            x, y, w, h = p["bbox"]
            # the box is axis-aligned: clamping its corners changes nothing inside the image
            cv2.rectangle(out, _pt(x, y, W, H), _pt(x + w, y + h, W, H), BOX_COLOUR, max(1, thick // 2), cv2.LINE_AA)
        shown = kpts[:, 2] >= kpt_thr
        for a, b in kp.skeleton:
            if shown[a] and shown[b]:
                segment = _clip_segment(kpts[a, :2], kpts[b, :2], W, H)
                if segment is not None:
                    cv2.line(out, *segment, _link_colour(a, b, kp), thick, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            x, y = kpts[k, :2]
            if -radius <= x <= W + radius and -radius <= y <= H + radius:   # else nothing of it shows
                cv2.circle(out, _pt(x, y, W, H), radius, _side(k, kp), -1, cv2.LINE_AA)
                cv2.circle(out, _pt(x, y, W, H), radius, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _pt(x: float, y: float, W: int, H: int) -> tuple[int, int]:
    """A pixel for OpenCV, whose drawing takes 32-bit ints: clamped to the image plus a margin
    of its own size, far enough that nothing drawn inside the image changes."""
    return (int(round(min(max(float(x), -W), 2.0 * W))),
            int(round(min(max(float(y), -H), 2.0 * H))))


def _clip_segment(p, q, W: int, H: int):
    """The part of segment p-q inside the image plus a margin of its own size, as two pixels,
    or None when the segment misses it (Liang-Barsky: clipping along the segment keeps its
    direction, which clamping each end would not)."""
    (x0, y0), (x1, y1) = map(float, p), map(float, q)
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for step, start, lo, hi in ((dx, x0, -W, 2.0 * W), (dy, y0, -H, 2.0 * H)):
        if step == 0:
            if not lo <= start <= hi:
                return None
            continue
        ta, tb = (lo - start) / step, (hi - start) / step
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    if t0 > t1:
        return None
    return (_pt(x0 + t0 * dx, y0 + t0 * dy, W, H), _pt(x0 + t1 * dx, y0 + t1 * dy, W, H))


def heatmap_montage(image: np.ndarray, pose: dict, input_size: tuple[int, int], columns: int = 6) -> np.ndarray:
    """The crop the network saw, then its K heatmaps over the crop, in a grid with joint names.

    `pose` comes from `estimate(..., return_heatmaps=True)` (it needs `heatmaps`, `center`,
    `scale`). Each heatmap is shown from 0 to its own maximum (negative values as 0), so that
    its shape is visible whatever its scale; the tile's title gives joint name and score.
    """
    in_h, in_w = input_size
    crop = crop_person(image, pose["center"], pose["scale"], input_size)   # (in_h, in_w, 3)
    heatmaps = np.asarray(pose["heatmaps"], dtype=np.float64)             # (K, h, w)
    names = for_joints(len(heatmaps)).names
    scores = np.asarray(pose["keypoints"])[:, 2]
    title_h = 16
    tiles = [_titled(crop, "input", title_h)]
    for k, hm in enumerate(heatmaps):
        m = hm.max()
        norm = np.clip(hm / m, 0.0, 1.0) if m > 0 else np.zeros_like(hm)
        big = cv2.resize(norm, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(cv2.applyColorMap((big * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        tile = (0.5 * crop + 0.5 * colour).astype(np.uint8)
        tiles.append(_titled(tile, f"{names[k]} {scores[k]:.2f}", title_h))
    rows = -(-len(tiles) // columns)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * columns - len(tiles))
    return np.concatenate([np.concatenate(tiles[r * columns:(r + 1) * columns], axis=1)
                           for r in range(rows)], axis=0)                 # (rows*(in_h+title), columns*in_w, 3)


def _titled(tile: np.ndarray, text: str, title_h: int) -> np.ndarray:
    bar = np.zeros((title_h, tile.shape[1], 3), dtype=np.uint8)
    scale = 0.35 if tile.shape[1] >= 150 else 0.3
    cv2.putText(bar, text, (3, title_h - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return buf.tobytes()
