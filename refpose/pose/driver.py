"""The image driver: images in, poses and COCO records out, one result per image, in order.

Every command that runs the network over images goes through `run_images`: `refpose infer`
(image files, and a video's frames), `refpose eval --images` (COCO), the MPII PCKh run and the
validation during training. For each image it reads the file (`refpose.pose.imageio`: EXIF,
pixel limit, one-line errors) unless it is given the pixels, takes its person boxes (given, or
from a person detector, or the whole image), and sends the crops of up to IMAGES_PER_FORWARD
images through the network together (`refpose.pose.pipeline.pose_images`). The fast path
computes a crop the same wherever it lies in a batch, so the results are those of the images
run one by one. An image that cannot be read, or whose boxes are refused, gives its error in
its result and the others go on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import ImageError, RefposeError
from .pipeline import PoseOptions, keypoints_of, pose_images, to_coco_records

IMAGES_PER_FORWARD = 8     # images whose crops go through the network together


@dataclass(frozen=True)
class ImageInput:
    """One image to run: where its pixels come from, which persons to look at, how to key its records."""

    path: str | None = None               # read with `read_image` ...
    image: np.ndarray | None = None       # ... unless the pixels are given (a video frame), RGB uint8
    boxes: np.ndarray | None = None       # (K, 4) x, y, w, h; None: the detector's, else the whole image
    box_scores: np.ndarray | None = None  # (K,), default 1
    image_id: int | None = None           # the records' keys (at least one of the two)
    file_name: str | None = None

    @property
    def name(self) -> str:
        """How messages name the image."""
        return self.path if self.path is not None else f"image {self.image_id}"


@dataclass
class ImageResult:
    """What one image gave: its poses and records, or the error that stopped it."""

    input: ImageInput
    poses: list
    records: list
    image: np.ndarray | None = None       # the pixels, when the caller keeps them (to draw)
    error: RefposeError | None = None


def run_images(inputs: Iterable[ImageInput], model, options: PoseOptions = PoseOptions(), *, detector=None,
               keep_images: bool = False, box_scores: bool | None = None,
               refine: Callable[[list, ImageInput], list] | None = None,
               per_forward: int = IMAGES_PER_FORWARD) -> Iterator[ImageResult]:
    """One `ImageResult` per input, in order, as each group of `per_forward` images is done.

    detector: a callable image -> (boxes, scores) (`refpose.pose.detector.PersonDetector`) that
    gives the boxes of inputs without any. keep_images: keep each image's pixels in its result.
    box_scores: records carry the score of their box (default: when a detector gives the boxes).
    refine: applied to each image's poses, in order, before its records are made (smoothing
    over video frames). An image with no box to look at (boxes of shape (0, 4)) is only checked
    to exist, not decoded, unless its pixels are kept.
    """
    box_scores = detector is not None if box_scores is None else box_scores
    batch = []
    for inp in inputs:
        batch.append(inp)
        if len(batch) == per_forward:
            yield from _run_batch(batch, model, options, detector, keep_images, box_scores, refine)
            batch = []
    if batch:
        yield from _run_batch(batch, model, options, detector, keep_images, box_scores, refine)


def _run_batch(batch: list[ImageInput], model, options, detector, keep_images, box_scores, refine) -> list:
    prepared = [_prepare(inp, detector, keep_images) for inp in batch]       # (result, boxes, scores)
    todo = [(r, boxes, scores) for r, boxes, scores in prepared if r.error is None and r.image is not None]
    posed = pose_images([(r.image, boxes, scores) for r, boxes, scores in todo], model, options, keep_going=True)
    for (r, _, _), poses in zip(todo, posed):
        if isinstance(poses, RefposeError):              # a box the pipeline refuses
            r.error = type(poses)(f"{r.input.name}: {poses}")
        else:
            r.poses = poses
    category = keypoints_of(model).person_category
    results = [r for r, _, _ in prepared]
    for r in results:
        if r.error is not None:
            continue
        if refine is not None:
            r.poses = refine(r.poses, r.input)
        r.records = to_coco_records(r.poses, r.input.image_id, r.input.file_name, category, box_scores)
        if not keep_images:
            r.image = None
    return results


def _prepare(inp: ImageInput, detector, keep_images: bool) -> tuple[ImageResult, np.ndarray | None, np.ndarray | None]:
    """The image's result with its pixels (or its error), and its boxes and box scores."""
    from ..fileio import path_problem
    from .imageio import read_image

    result = ImageResult(inp, [], [])
    boxes, scores = inp.boxes, inp.box_scores
    try:
        if boxes is not None and len(boxes) == 0 and not keep_images and inp.image is None:
            problem = path_problem(inp.path)       # nobody to look at: only looked for, not decoded
            if problem:
                raise ImageError(f"{inp.path}: {problem}")
            return result, boxes, scores
        result.image = inp.image if inp.image is not None else read_image(inp.path)
        if boxes is None and detector is not None:
            boxes, scores = detector(result.image)
    except RefposeError as e:
        result.error = e
    return result, boxes, scores
