"""COCO person keypoints for training: the persons, the augmentation and the crop.

The crop is inference's (`refpose.pose.pipeline`): box -> centre and scale (aspect ratio of the
input, padding 1.25), the affine of `get_affine_transform`, OpenCV's bilinear warp with zeros
outside the image, RGB / 255 with the ImageNet mean and std. Augmentation only changes the
centre, scale and angle of that region before the warp, and may mirror it, so a network
trained on these crops is decoded exactly as it was trained (DESIGN section 6).

Augmentation follows MMPose 1.x's top-down COCO pipeline (td-hm_hrnet-w32_8xb64-210e_coco-256x192:
`RandomFlip`, `RandomHalfBody`, `RandomBBoxTransform`, `TopdownAffine`), with the defaults of
those transforms; HRNet `JointsDataset.__getitem__` is the older form of the same steps.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import DataError
from ..keypoints import COCO, Keypoints
from ..pose.crop import affine_points, box_to_center_scale, get_affine_transform, normalize, warp
from .targets import SIGMA, heatmap_targets

# joints of the upper body, per dataset (MMPose dataset meta `upper_body_ids`); the rest are lower
UPPER_BODY = {"coco": tuple(range(11))}          # nose .. right wrist
OTHER_IMAGE_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"\x00\x00\x00\x0cjP  ")  # PNM, JPEG 2000: OpenCV reads them
HEADER_BYTES = 4096      # read of each training image when the set is indexed: its format and declared size


class TrainDataError(DataError):
    """A training set that cannot be used: not COCO keypoints, no image found, no person left."""


@dataclass(frozen=True)
class Augment:
    """Random changes of the crop; the defaults are MMPose 1.x's (see the module docstring)."""
    flip_prob: float = 0.5                   # RandomFlip(prob=0.5)
    half_body_prob: float = 0.3              # RandomHalfBody(prob=0.3)
    half_body_min_joints: int = 9            # ... min_total_keypoints=9 labelled joints
    half_body_min_upper: int = 2             # ... min_upper_keypoints=2
    half_body_min_lower: int = 3             # ... min_lower_keypoints=3
    half_body_upper_prob: float = 0.7        # ... upper_prioritized_prob=0.7
    half_body_padding: float = 1.5           # ... padding=1.5
    scale_range: tuple[float, float] = (0.5, 1.5)   # RandomBBoxTransform(scale_factor=(0.5, 1.5), scale_prob=1)
    shift_factor: float = 0.16               # ... shift_factor=0.16 (of the box size), shift_prob=0.3
    shift_prob: float = 0.3
    rotate_factor: float = 80.0              # ... rotate_factor=80 degrees, rotate_prob=0.6
    rotate_prob: float = 0.6

    @classmethod
    def off(cls) -> "Augment":
        return cls(flip_prob=0.0, half_body_prob=0.0, scale_range=(1.0, 1.0), shift_prob=0.0, rotate_prob=0.0)


@dataclass(frozen=True)
class Person:
    """One training sample: the image it is in, its box [x, y, w, h] and joints (K, 3) x, y, v."""
    image: str
    box: np.ndarray
    keypoints: np.ndarray


@dataclass
class TrainSet:
    """The persons of a COCO keypoints file whose images were found, and what was left out."""
    persons: list
    images: int                                       # images with at least one usable person
    source: str
    skipped_unlabelled: int = 0                       # annotations without a labelled joint or area (crowds)
    missing: list = field(default_factory=list)      # image paths not found, or not images: "path: problem"
    missing_persons: int = 0                          # persons in those images

    def summary(self) -> dict:
        return {"annotations": self.source, "persons": len(self.persons), "images": self.images,
                "skipped_unlabelled": self.skipped_unlabelled, "missing_images": len(self.missing),
                "missing_persons": self.missing_persons, "missing": self.missing}

    # pickled compactly (rank 0 indexes the set and sends it to the other ranks): the persons as
    # three arrays and the image paths once, not 150k objects of two small arrays each
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        persons = state.pop("persons")
        paths = sorted({p.image for p in persons})
        index = {path: i for i, path in enumerate(paths)}
        state["packed"] = (paths, np.array([index[p.image] for p in persons], dtype=np.int64),
                           np.array([p.box for p in persons]).reshape(-1, 4),
                           np.array([p.keypoints for p in persons]))
        return state

    def __setstate__(self, state: dict) -> None:
        paths, which, boxes, keypoints = state.pop("packed")
        state["persons"] = [Person(paths[i], box, kp) for i, box, kp in zip(which, boxes, keypoints)]
        self.__dict__.update(state)


def load_train_set(ann: "str | os.PathLike", images_dir: "str | os.PathLike",
                   keypoints: Keypoints = COCO) -> TrainSet:
    """Persons for training from a COCO person-keypoints file and its image folder.

    The file is checked as `refpose eval` checks a ground truth, and the persons are those it
    evaluates (`evaluate.person_box`: a labelled joint, as HRNet and MMPose require, a positive
    area and a box left after clipping to the image); the others are counted.
    Images that are not in the folder, or whose first bytes are not an image refpose can decode
    (an empty file, an unknown format, a declared size beyond the pixel limit), are listed as
    "path: problem"; a `file_name` that leads out of the folder (`../x`, an absolute path) is
    listed and never opened. Coordinates beyond any image are refused when the annotations are
    read (`load_annotations`).
    TrainDataError when no image is usable or no person is left.
    """
    from ..data.evaluate import person_box
    from ..data.coco import load_annotations

    images_dir = str(images_dir)
    if not os.path.isdir(images_dir):
        raise TrainDataError(f"{images_dir}: no such image directory")
    gt = load_annotations(ann)
    K = keypoints.num_joints
    by_image: dict[int, list] = {}
    skipped = 0
    for a in gt.dataset["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        if len(kp) != K:
            raise TrainDataError(f"{gt.source}: annotation id {a['id']} has {len(kp)} joints, "
                                 f"{keypoints.name} has {K}")
        box = person_box(a, gt.images[a["image_id"]])
        if box is None:
            skipped += 1
            continue
        by_image.setdefault(a["image_id"], []).append((np.array(box), kp))
    persons, missing, missing_persons = [], [], 0
    for image_id, entries in by_image.items():
        path, problem = image_in_folder(images_dir, gt.images[image_id].get("file_name"), image_id)
        if problem:
            missing.append(f"{path}: {problem}")
            missing_persons += len(entries)
            continue
        persons += [Person(path, box, kp) for box, kp in entries]
    if not by_image:
        raise TrainDataError(f"{gt.source}: no person with labelled keypoints "
                             f"({skipped} annotations skipped)")
    if not persons:
        raise TrainDataError(f"{images_dir}: none of the {len(by_image)} images of {gt.source} is there "
                             f"(first: {missing[0]})")
    return TrainSet(persons, len(by_image) - len(missing), gt.source, skipped, sorted(missing), missing_persons)


def image_in_folder(images_dir: str, name, image_id) -> tuple[str, str | None]:
    """The path of an annotated image in the image folder, and why it cannot be used, or None.

    The name must stay inside the folder (no absolute path, no `..` leading out); the file must
    pass the one path check and its first HEADER_BYTES must be an image (`imageio.image_format`)
    of no more than the pixel limit. Nothing is decoded: a file damaged further on is found
    when its sample is made, and skipped then."""
    from ..fileio import name_in_folder, path_problem
    from ..pose.imageio import MAX_PIXELS, image_format, image_size

    if not isinstance(name, str) or not name:
        return f"image id {image_id}", "no file_name"
    path, problem = name_in_folder(images_dir, name)
    if problem:
        return path, problem
    problem = path_problem(path)
    if problem:
        return path, problem
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        return path, f"cannot read: {e.strerror or e}"
    if not head:
        return path, "empty file (0 bytes)"
    if image_format(head) is None and not head.startswith(OTHER_IMAGE_MAGIC):
        return path, "not an image file (no JPEG, PNG, BMP, GIF, WebP, TIFF, PNM or JPEG 2000 header)"
    size = image_size(head)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        return path, f"image too large: its header declares {size[0]}x{size[1]} pixels"
    return path, None


# --- one sample -------------------------------------------------------------------------------
def _truncnorm(rng: np.random.Generator) -> float:
    """A standard normal truncated to [-1, 1] (scipy `truncnorm(-1, 1)`, as MMPose draws), by rejection."""
    while True:
        v = rng.standard_normal()
        if -1.0 <= v <= 1.0:
            return float(v)


def half_body_region(keypoints: np.ndarray, visible: np.ndarray, rng: np.random.Generator, aug: Augment,
                     upper: tuple[int, ...], aspect_ratio: float):
    """MMPose `RandomHalfBody`: (centre, scale) around the labelled joints of the upper or the
    lower body, or None when it does not apply. Centre: their mean; size: their extent x 1.5,
    widened to the input's aspect ratio (done by `TopdownAffine` in MMPose)."""
    if visible.sum() < aug.half_body_min_joints or rng.random() > aug.half_body_prob:
        return None
    ids_upper = [k for k in upper if visible[k]]
    ids_lower = [k for k in range(len(visible)) if k not in upper and visible[k]]
    prefer_upper = rng.random() < aug.half_body_upper_prob
    few_upper, few_lower = len(ids_upper) < aug.half_body_min_upper, len(ids_lower) < aug.half_body_min_lower
    if few_upper and few_lower:
        return None
    ids = ids_upper if few_lower or (prefer_upper and not few_upper) else ids_lower
    pts = keypoints[ids]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    _, scale = box_to_center_scale([lo[0], lo[1], *(hi - lo)], aspect_ratio, aug.half_body_padding)
    return pts.mean(axis=0), scale


def rotation_about(center, degrees: float) -> np.ndarray:
    """3x3 matrix of the image turned by `degrees` (counter-clockwise on screen) about `center`.

    Composed after `get_affine_transform`, it gives HRNet's rotated crop (`get_affine_transform`
    with `rot`): the crop shows the region turned by `degrees`."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    R = np.array([[c, s], [-s, c]])               # the inverse of HRNet's src-point rotation
    cx, cy = (float(v) for v in center)
    out = np.eye(3)
    out[:2, :2] = R
    out[:2, 2] = (cx, cy) - R @ (cx, cy)
    return out


def mirror(width: int) -> np.ndarray:
    """3x3 matrix of the horizontal flip of an image `width` pixels wide: x -> width - 1 - x
    (pixel centres at integer x, OpenCV's convention, so pixel j goes to pixel width - 1 - j)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def sample_transform(person: Person, image_size: tuple[int, int], input_size: tuple[int, int],
                     rng: np.random.Generator, aug: Augment, keypoints: Keypoints = COCO):
    """The random view of one person: the 2x3 matrix from image to input pixels, the joints
    (K, 2) in input pixels, their labelled flags (K,), and whether the view is mirrored."""
    H, W = image_size
    in_h, in_w = input_size
    aspect = in_w / in_h
    kp, visible = person.keypoints[:, :2].copy(), person.keypoints[:, 2] > 0
    pre = np.eye(3)                                   # image -> (maybe mirrored) image
    flipped = rng.random() < aug.flip_prob
    center, scale = box_to_center_scale(person.box, aspect)
    if flipped:                                       # MMPose RandomFlip: image, box and joints
        pre = mirror(W)
        center = affine_points(center, pre[:2])
        kp = affine_points(kp, pre[:2])[list(keypoints.flip_index)]
        visible = visible[list(keypoints.flip_index)]
    half = half_body_region(kp, visible, rng, aug, UPPER_BODY[keypoints.name], aspect)
    if half is not None:
        center, scale = half
    # MMPose RandomBBoxTransform: shift, scale (truncated normals), then rotation
    if rng.random() < aug.shift_prob:
        center = center + np.array([_truncnorm(rng), _truncnorm(rng)]) * aug.shift_factor * scale
    lo, hi = aug.scale_range
    scale = scale * ((hi + lo) / 2 + _truncnorm(rng) * (hi - lo) / 2)
    degrees = _truncnorm(rng) * aug.rotate_factor if rng.random() < aug.rotate_prob else 0.0
    crop = np.vstack([get_affine_transform(center, scale, input_size), [0.0, 0.0, 1.0]])
    view = crop @ rotation_about(center, degrees)                    # (mirrored) image -> input
    return (view @ pre)[:2], affine_points(kp, view[:2]), visible, flipped


def make_sample(image: np.ndarray, person: Person, input_size: tuple[int, int], heatmap_size: tuple[int, int],
                rng: np.random.Generator, aug: Augment, sigma: float = SIGMA, keypoints: Keypoints = COCO,
                mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Network input (3, in_h, in_w) float32 (normalised with the config's `mean` and `std`), heatmaps
    (K, h, w) and target weights (K,) of one person."""
    M, kp, visible, _ = sample_transform(person, image.shape[:2], input_size, rng, aug, keypoints)
    x = normalize(warp(image, M, input_size)[None], mean, std)[0]
    stride = input_size[1] / heatmap_size[1]
    heatmaps, weights = heatmap_targets(kp, visible, heatmap_size, stride, sigma)
    return x, heatmaps, weights


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: the same for any worker count or rank."""
    return np.random.default_rng([seed, epoch, index])
