"""Top-down pose estimation around WGNet: person boxes in, keypoints per box out.

For each image: check the boxes (none: the whole image), crop each person (`crop`), run the
network on all the crops of a batch of images at once (with the flip test if asked), decode
the heatmaps (`decode`), map the keypoints back to image pixels, rescore, OKS-NMS (if asked),
and write COCO keypoint-results records. The steps and their conventions are those of HRNet
(Sun et al. 2019) and MMPose 1.x, so that numbers are comparable with theirs.

One deliberate addition to the references: keypoints are clipped to the image (x in [0, W-1],
y in [0, H-1]), so that a joint predicted in the padding around the image lands on its border.
Clipping is a projection onto a convex set: it brings the joint closer to every point of that
set, so it can lower a keypoint similarity (OKS) only for a ground-truth point beyond the last
pixel centre (x > W-1 or y > H-1), and by at most a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import variant_of
from ..errors import BoxError, DataError, InputShapeError, RefposeError, WeightsError
from ..keypoints import COCO, Keypoints
from .crop import affine_points, box_to_center_scale, check_box, crop_person, get_affine_transform, normalize
from .decode import decode_heatmaps, flip_back, instance_score
from .nms import OKS_NMS_THR, oks_nms

MAX_BATCH = 16             # crops per forward pass (twice as many images with the flip test)




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
                "box_score": float(persons.box_scores[i]),
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
    category = keypoints_of(model).person_category
    out = []
    for (_, _, _, image_id, file_name), poses in zip(items, pose_images(
            [item[:3] for item in items], model, options, keep_going=keep_going)):
        out.append(poses if isinstance(poses, RefposeError) else
                   (poses, to_coco_records(poses, image_id, file_name, category)))
    return out


def pose_images(items, model, options: PoseOptions = PoseOptions(), *, keep_going: bool = False) -> list:
    """The poses of several images, their crops run through the network together: `items` are
    (image, boxes, box_scores); one list of poses per item (after OKS-NMS if `options.oks_nms`),
    or, with `keep_going`, the RefposeError of an image whose input is refused."""
    persons = []
    for image, boxes, scores in items:
        try:
            persons.append(crop_persons(image, boxes, scores, model.config.input_size))
        except RefposeError as e:
            if not keep_going:
                raise
            persons.append(e)
    poses_of = iter(_run(model, [p for p in persons if isinstance(p, Persons)], options))
    sigmas = keypoints_of(model).oks_sigmas if options.oks_nms is not None else None
    out = []
    for p in persons:
        if not isinstance(p, Persons):
            out.append(p)
            continue
        poses = next(poses_of)
        out.append(suppress(poses, options.oks_nms, sigmas) if options.oks_nms is not None else poses)
    return out


def _run(model, persons: list[Persons], options: PoseOptions) -> list[list[dict]]:
    """Poses of each image's persons: one forward pass (in batches) over all their crops."""
    counts = [len(p.crops) for p in persons]
    if not sum(counts):
        return [[] for _ in persons]
    variant = variant_of(getattr(model.config, "name", ""))
    x = normalize(np.concatenate([p.crops for p in persons]), variant.mean, variant.std)   # (sum K, 3, in_h, in_w)
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
                    category: int = COCO.person_category, box_scores: bool = False) -> list[dict]:
    """COCO keypoint-results records: `image_id` and/or `file_name`, `category_id` (person),
    `bbox`, `keypoints` (51 floats: x, y, score per joint), `score`; with `box_scores`, the
    score of the box each pose was estimated in (`box_score`), and a pose's `track_id` when it
    has one (refpose.pose.smooth)."""
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
        if box_scores:
            r["box_score"] = float(p["box_score"])
        if "track_id" in p:
            r["track_id"] = int(p["track_id"])
        records.append(r)
    return records
