"""Top-down pose estimation around WGNet: person boxes in, 17 COCO keypoints per box out.

The steps and their conventions are those of HRNet (Sun et al. 2019, `lib/utils/transforms.py`,
`lib/core/inference.py`) and MMPose 1.x (`mmpose/structures/bbox/transforms.py`,
`mmpose/codecs/msra_heatmap.py`, `mmpose/codecs/utils/refinement.py`), so that numbers are
comparable with theirs:

    box [x, y, w, h] -> centre and scale (aspect ratio of the network input, padding 1.25)
    -> affine crop (cv2.warpAffine) -> RGB / 255, mean/std (DESIGN section 1) -> heatmaps
    (optionally averaged with those of the mirrored crop) -> argmax with a quarter-pixel shift,
    or DARK -> heatmap pixels -> input pixels -> image pixels by the inverse affine.

Coordinates follow OpenCV's: pixel (i, j) has its centre at x = j, y = i. One deliberate
addition to the references: keypoints are clipped to the image (x in [0, W-1], y in [0, H-1]),
so that a joint predicted in the padding around the image lands on its border. Clipping is a
projection onto a convex set: it brings the joint closer to every point of that set, so it can
lower a keypoint similarity (OKS) only for a ground-truth point beyond the last pixel centre
(x > W-1 or y > H-1), and by at most a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import get_config
from .errors import BoxError, DataError, InputShapeError, RefposeError, WeightsError
from .keypoints import COCO, Keypoints
from .nms import OKS_NMS_THR, oks_nms

PADDING = 1.25                                # box enlargement (HRNet, MMPose `padding=1.25`)
MEAN = (0.485, 0.456, 0.406)                  # ImageNet statistics, RGB (DESIGN section 1)
STD = (0.229, 0.224, 0.225)
KPT_SCORE_THR = 0.2        # joints counted in the instance score (HRNet `IN_VIS_THRE`, MMPose `vis_thr`)
DARK_KERNEL = 11           # DARK's blur for heatmaps of sigma 2: k = 6 sigma - 1 (MMPose `blur_kernel_size`)
MAX_BATCH = 16             # crops per forward pass (twice as many images with the flip test)
IMAGES_PER_FORWARD = 8     # images whose crops `refpose infer` and `refpose eval` send through the network together


# --- boxes and the affine crop ---------------------------------------------------------------
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


def normalize(crops: np.ndarray, dtype=np.float32) -> np.ndarray:
    """RGB uint8 crops (N, H, W, 3) -> network input (N, 3, H, W): /255, then (x - mean) / std."""
    x = (crops.astype(np.float64) / 255.0 - MEAN) / STD       # (N, H, W, 3)
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


# --- heatmap decoding -----------------------------------------------------------------------------
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


def predict_heatmaps(model, x: np.ndarray, flip: bool = False) -> np.ndarray:
    """Heatmaps (N, K, h, w) of inputs (N, 3, H, W), in batches; with `flip`, averaged with
    the flipped-back heatmaps of the mirrored inputs (the flip test)."""
    dtype = getattr(model, "dtype", np.float32)
    flip_index = keypoints_of(model).flip_index
    out = []
    for i in range(0, len(x), MAX_BATCH):
        xb = np.ascontiguousarray(x[i:i + MAX_BATCH], dtype=dtype)
        n = len(xb)
        if flip:
            both = np.asarray(model(np.concatenate([xb, xb[..., ::-1]])), dtype=np.float64)   # (2n, K, h, w)
            out.append(0.5 * (both[:n] + flip_back(both[n:], flip_index)))
        else:
            out.append(np.asarray(model(xb), dtype=np.float64))
    return np.concatenate(out)


def keypoints_of(model) -> Keypoints:
    """The keypoint conventions of a model's outputs: its config's dataset (COCO for a model,
    such as a bare callable, that names none)."""
    return getattr(getattr(model, "config", None), "keypoints", COCO)


def instance_score(keypoint_scores: np.ndarray, box_score: float = 1.0, thr: float = KPT_SCORE_THR) -> float:
    """Box score x mean of the keypoint scores above `thr` (0 when none is): HRNet and MMPose
    rescoring (`TopDownCocoDataset.evaluate`)."""
    s = np.asarray(keypoint_scores, dtype=np.float64)
    s = s[s > thr]
    return float(box_score) * float(s.mean()) if s.size else 0.0


# --- the pipeline ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoseOptions:
    """The test-time choices of the top-down pipeline (plain values: they cross process boundaries)."""

    flip: bool = False                   # flip test: average with the mirrored crop's heatmaps
    dark: bool = False                   # DARK sub-pixel decoding instead of the quarter-pixel shift
    oks_nms: float | None = None         # OKS-NMS threshold per image (MMPose: 0.9); None keeps every pose
    heatmaps: bool = False               # keep each person's heatmaps (17, h, w) in its pose


@dataclass(frozen=True)
class Persons:
    """The person boxes of one image, checked, with the crop of each: what the network sees."""

    boxes: np.ndarray                    # (K, 4) x, y, w, h in image pixels
    box_scores: np.ndarray               # (K,)
    centers: np.ndarray                  # (K, 2) centre of each crop region
    scales: np.ndarray                   # (K, 2) its width and height in pixels
    crops: np.ndarray                    # (K, in_h, in_w, 3) RGB uint8
    image_size: tuple[int, int]          # (H, W) of the image


def crop_persons(image: np.ndarray, boxes, box_scores, input_size: tuple[int, int]) -> Persons:
    """Check an image and its boxes (None: the whole image) and cut the network's view of each box."""
    image = _check_image(image)
    H, W = image.shape[:2]
    boxes = _check_boxes([[0.0, 0.0, float(W), float(H)]] if boxes is None else boxes, (H, W))
    K = len(boxes)
    box_scores = np.ones(K) if box_scores is None else np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if len(box_scores) != K:
        raise BoxError(f"{len(box_scores)} box scores for {K} boxes")
    in_h, in_w = input_size
    regions = [box_to_center_scale(b, in_w / in_h) for b in boxes]
    centers, scales = np.array([c for c, _ in regions]).reshape(K, 2), np.array([s for _, s in regions]).reshape(K, 2)
    crops = np.stack([crop_person(image, c, s, input_size) for c, s in regions]) if K else \
        np.zeros((0, in_h, in_w, 3), np.uint8)                                       # (K, in_h, in_w, 3)
    return Persons(boxes, box_scores, centers, scales, crops, (H, W))


def _check_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray:
    """Boxes as a (K, 4) float array, each checked by `check_box`; BoxError otherwise."""
    try:
        boxes = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoxError("boxes must be numbers, (K, 4) as x, y, w, h") from None
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BoxError(f"boxes must have shape (K, 4) as x, y, w, h, got {boxes.shape}")
    for b in boxes:
        check_box(b, image_size)
    return boxes


def poses_from_heatmaps(persons: Persons, heatmaps: np.ndarray, dark: bool = False,
                        keep_heatmaps: bool = False) -> list[dict]:
    """Decode the heatmaps (K, 17, h, w) of the persons' crops into poses in image pixels, rescored."""
    K, in_h, in_w = persons.crops.shape[:3]
    H, W = persons.image_size
    hm_h, hm_w = heatmaps.shape[2:]
    coords, scores = decode_heatmaps(heatmaps, dark)                                 # (K, 17, 2), (K, 17)
    coords = coords * (in_w / hm_w, in_h / hm_h)                                     # heatmap -> input pixels
    poses = []
    for i in range(K):
        center, scale = persons.centers[i], persons.scales[i]
        xy = affine_points(coords[i], get_affine_transform(center, scale, (in_h, in_w), inv=True))
        xy = np.clip(xy, 0.0, (W - 1, H - 1))
        pose = {"bbox": [float(v) for v in persons.boxes[i]],
                "keypoints": np.concatenate([xy, scores[i][:, None]], axis=1),        # (17, 3)
                "score": instance_score(scores[i], persons.box_scores[i]),
                "center": [float(v) for v in center], "scale": [float(v) for v in scale]}
        if keep_heatmaps:
            pose["heatmaps"] = heatmaps[i].astype(np.float32)
        poses.append(pose)
    return poses


def suppress(poses: list[dict], thr: float = OKS_NMS_THR, sigmas=COCO.oks_sigmas) -> list[dict]:
    """The poses OKS-NMS keeps, best score first. MMPose's area for it is that of the padded,
    aspect-fixed crop: scale w x h in pixels."""
    if not poses:
        return []
    keypoints = np.stack([p["keypoints"] for p in poses])                           # (K, 17, 3)
    scores = np.array([p["score"] for p in poses])
    areas = np.array([p["scale"][0] * p["scale"][1] for p in poses])
    return [poses[i] for i in oks_nms(keypoints, scores, areas, thr, sigmas)]


def estimate(image: np.ndarray, model, boxes=None, *, box_scores=None, flip: bool = False,
             dark: bool = False, return_heatmaps: bool = False) -> list[dict]:
    """Top-down poses of the persons in `boxes` (one dict per box, in order).

    image: RGB uint8 (H, W, 3). boxes: (K, 4) COCO [x, y, w, h] in image pixels; None is the
    whole image. box_scores: (K,), default 1. Each dict has `bbox` (4 floats), `keypoints`
    (17, 3) x, y, score in image pixels, `score` (box score x mean keypoint score above 0.2),
    `center` and `scale` of the crop, and with `return_heatmaps` the `heatmaps` (17, h, w).
    Raises BoxError for a box with no area or outside the image.
    """
    options = PoseOptions(flip=flip, dark=dark, heatmaps=return_heatmaps)
    return _run(model, [crop_persons(image, boxes, box_scores, model.config.input_size)], options)[0]


def predict(image: np.ndarray, model, boxes=None, box_scores=None, options: PoseOptions = PoseOptions(), *,
            image_id=None, file_name: str | None = None) -> tuple[list[dict], list[dict]]:
    """The top-down pipeline of one image: poses and their COCO keypoint-results records.

    crop each box -> forward (with the flip test if asked) -> decode -> rescore -> OKS-NMS (if
    `options.oks_nms`) -> records keyed by `image_id` and/or `file_name`. `refpose infer`,
    `refpose eval --images` and validation during training all run it.
    """
    return predict_images([(image, boxes, box_scores, image_id, file_name)], model, options)[0]


def predict_images(items, model, options: PoseOptions = PoseOptions(), *,
                   keep_going: bool = False) -> list:
    """`predict` over several images at once: `items` are (image, boxes, box_scores, image_id,
    file_name); the crops of all of them go through the network together (in batches of
    MAX_BATCH crops), one (poses, records) per item. With `keep_going`, an image whose input is
    refused (a bad box) gives its RefposeError in place of its result and the others go on."""
    items = list(items)
    persons = []
    for image, boxes, scores, _, _ in items:
        try:
            persons.append(crop_persons(image, boxes, scores, model.config.input_size))
        except RefposeError as e:
            if not keep_going:
                raise
            persons.append(e)
    ok = [p for p in persons if isinstance(p, Persons)]
    poses_of = iter(_run(model, ok, options))
    keypoints = keypoints_of(model)
    out = []
    for (_, _, _, image_id, file_name), p in zip(items, persons):
        if not isinstance(p, Persons):
            out.append(p)
            continue
        poses = next(poses_of)
        if options.oks_nms is not None:
            poses = suppress(poses, options.oks_nms, keypoints.oks_sigmas)
        out.append((poses, to_coco_records(poses, image_id, file_name, keypoints.person_category)))
    return out


def _run(model, persons: list[Persons], options: PoseOptions) -> list[list[dict]]:
    """Poses of each image's persons: one forward pass (in batches) over all their crops."""
    counts = [len(p.crops) for p in persons]
    if not sum(counts):
        return [[] for _ in persons]
    x = normalize(np.concatenate([p.crops for p in persons]))                         # (sum K, 3, in_h, in_w)
    with np.errstate(over="ignore", invalid="ignore"):    # an overflow is reported below, once
        heatmaps = predict_heatmaps(model, x, options.flip)                          # (sum K, K', h, w)
    check_finite_heatmaps(heatmaps, model)
    parts = np.split(heatmaps, np.cumsum(counts)[:-1])
    return [poses_from_heatmaps(p, hm, options.dark, options.heatmaps) for p, hm in zip(persons, parts)]


def check_finite_heatmaps(heatmaps: np.ndarray, model) -> None:
    """WeightsError naming the weights when the network gave NaN or infinity: finite weights can
    still overflow the compute dtype (a head weight of 3e38 in float32), and no keypoint, score
    or JSON number can come from such heatmaps. Every pipeline output passes here once."""
    if np.isfinite(heatmaps).all():
        return
    weights = getattr(model, "source", None) or f"the seeded weights of config {model.config.name}"
    dtype = np.dtype(getattr(model, "dtype", np.float32)).name
    raise WeightsError(f"{weights}: the network's output is not finite (NaN or infinity) in {dtype}; "
                       "the weights overflow it")


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputShapeError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputShapeError(f"expected a non-empty image, got shape {image.shape}")
    return image


def to_coco_records(poses: list[dict], image_id=None, file_name: str | None = None,
                    category: int = COCO.person_category) -> list[dict]:
    """COCO keypoint-results records: `image_id` and/or `file_name`, `category_id` (person),
    `bbox`, `keypoints` (51 floats: x, y, score per joint), `score`."""
    if image_id is None and file_name is None:
        raise DataError("a COCO keypoint record needs an image_id or a file_name")
    records = []
    for p in poses:
        r = {}
        if image_id is not None:
            r["image_id"] = image_id
        if file_name is not None:
            r["file_name"] = file_name
        r["category_id"] = category
        r["bbox"] = [float(v) for v in p["bbox"]]
        r["keypoints"] = [float(v) for v in np.asarray(p["keypoints"], dtype=np.float64).reshape(-1)]
        r["score"] = float(p["score"])
        records.append(r)
    return records


# --- the model ------------------------------------------------------------------------------------
DEFAULT_CONFIG = "wgnet"


def default_weights_path(config=DEFAULT_CONFIG) -> Path | None:
    """`weights/<config name>.safetensors` (e.g. `weights/wgnet.safetensors`), looked for in the
    current directory, then in the source checkout beside the package; None when neither exists."""
    name = get_config(config).name
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        path = root / "weights" / f"{name}.safetensors"
        if path.is_file():
            return path
    return None


def default_model(weights=None, config=None, dtype: str = "float32"):
    """The model to run: `weights` if given; else the default weights file of the config (see
    `default_weights_path`) if there is one; else seeded untrained weights (`refpose.build`,
    seed 0). `model.trained` tells which (False for untrained, None when the file does not say)."""
    from .weights import build, load

    if weights is not None:
        return load(weights, config, dtype)
    cfg = get_config(config if config is not None else DEFAULT_CONFIG)
    path = default_weights_path(cfg)
    if path is not None:
        return load(path, cfg, dtype)
    return build(cfg, seed=0, dtype=dtype)
