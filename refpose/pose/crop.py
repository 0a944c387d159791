"""The person crop of the top-down pipeline: a box becomes the network's view of one person.

    box [x, y, w, h] -> centre and scale (the network input's aspect ratio, padding 1.25)
    -> affine crop (cv2.warpAffine, zeros outside the image) -> RGB / 255, then (x - mean) / std

as HRNet (Sun et al. 2019, `lib/utils/transforms.py`) and MMPose 1.x
(`mmpose/structures/bbox/transforms.py`) do it. Coordinates follow OpenCV's: pixel (i, j) has its
centre at x = j, y = i. Inference and training crop with the same functions.
"""
from __future__ import annotations

import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import BoxError

PADDING = 1.25                                # box enlargement (HRNet, MMPose `padding=1.25`)


def box_to_center_scale(box, aspect_ratio: float, padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """COCO box [x, y, w, h] -> centre (2,) and scale (2,) = (w, h) of the region to crop, in pixels.

    The box is widened or heightened to the network's aspect ratio w/h, then enlarged by
    `padding` (MMPose `bbox_xywh2cs` and `_fix_aspect_ratio`; HRNet `_xywh2cs` without its /200).
    """
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h]) * padding


def get_affine_transform(center, scale, output_size: tuple[int, int], inv: bool = False) -> np.ndarray:
    """2x3 matrix mapping the region (centre, scale) of the image onto an output of (H, W) pixels.

    HRNet `get_affine_transform` with rotation 0 and no shift, scale in pixels (MMPose
    `get_warp_matrix`): the centre goes to (W/2, H/2) and the region's width to W, from three
    point pairs. With `inv`, the matrix mapping output pixels back to image pixels.
    """
    out_h, out_w = output_size
    center = np.asarray(center, dtype=np.float64)
    src_w = float(scale[0])
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0], dst[0] = center, (out_w * 0.5, out_h * 0.5)
    src[1], dst[1] = center + (0.0, -0.5 * src_w), dst[0] + (0.0, -0.5 * out_w)
    src[2], dst[2] = _third_point(src[0], src[1]), _third_point(dst[0], dst[1])
    if inv:
        src, dst = dst, src
    # what cv2.getAffineTransform solves, in float64 (it takes float32 points: ~1e-4 px at 1000 px)
    return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T     # (2, 3)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point that makes a right angle at b with a (HRNet `get_3rd_point`)."""
    d = a - b
    return b + np.array([-d[1], d[0]])


def affine_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ M[:, :2].T + M[:, 2]


def warp(image: np.ndarray, M: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The crop (in_h, in_w, 3) that the affine M (image -> input) gives: OpenCV's bilinear warp,
    zeros outside the image. Inference and training crop with it alike."""
    import cv2       # imported when used: `import refpose` does not need OpenCV

    in_h, in_w = input_size
    return cv2.warpAffine(image, M, (in_w, in_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_person(image: np.ndarray, center, scale, input_size: tuple[int, int]) -> np.ndarray:
    """The network's view (H, W, 3) of one person: bilinear affine crop, zeros outside the image."""
    return warp(image, get_affine_transform(center, scale, input_size), input_size)


def normalize(crops: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=np.float32) -> np.ndarray:
    """RGB uint8 crops (N, H, W, 3) -> network input (N, 3, H, W): /255, then (x - mean) / std with the
    statistics of the config (`refpose.config.Variant`; ImageNet's for every named config)."""
    x = (crops.astype(np.float64) / 255.0 - mean) / std       # (N, H, W, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)   # (N, 3, H, W)


def check_box(box, image_size: tuple[int, int]) -> np.ndarray:
    """A box [x, y, w, h] as floats; BoxError when it is not finite, has no area or misses the image."""
    H, W = image_size
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    text = "[" + ", ".join(f"{v:g}" for v in b) + "]"
    if b.size != 4:
        raise BoxError(f"box {text} must have 4 numbers x, y, w, h")
    if not np.isfinite(b).all():
        raise BoxError(f"box {text} has a value that is not finite")
    x, y, w, h = b
    if w <= 0 or h <= 0:
        raise BoxError(f"box {text} has zero area (width and height must be positive)")
    if x >= W or y >= H or x + w <= 0 or y + h <= 0:
        raise BoxError(f"box {text} lies outside the {W}x{H} image")
    return b
