"""Person detections: reading a COCO detection-results file, and matching its records to an image.

A detection-results file is a JSON list of `{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}` (the format of COCO's detection challenge and of HRNet / MMPose's
`COCO_val2017_detections_AP_H_56_person.json`). Records keyed by `file_name` instead of
`image_id` are accepted too. `refpose infer` and `refpose eval --images` both read boxes
through `load_detections` and find an image's boxes through `find_detections`, so the two
commands agree on which boxes belong to which image.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from ..fileio import brief, is_int, is_number, read_json
from ..keypoints import COCO


def load_detections(path: "str | os.PathLike", box_thr: float = 0.0,
                    category: int = COCO.person_category) -> dict:
    """COCO detection results -> {image key: (boxes (K, 4) xywh, scores (K,))}.

    The key is the record's `image_id`, or its `file_name` when it has none. Only persons
    (`category`) with score >= box_thr and a positive width and height are kept (HRNet
    `_load_coco_person_detection_results`; its evaluation threshold is 0.0); an image without
    such a box is absent. A malformed file raises DataError naming it and the first bad record.
    """
    path = os.fspath(path)
    dets = read_json(path, "detections")
    if not isinstance(dets, list):
        raise DataError(f"{path}: expected a JSON list of COCO detection results, got a JSON {type(dets).__name__}")
    per_image: dict = {}
    for i, d in enumerate(dets):
        key, box, score = _check_record(d, f"{path}: detection {i}")
        if d["category_id"] != category or score < box_thr or box[2] <= 0 or box[3] <= 0:
            continue
        boxes, scores = per_image.setdefault(key, ([], []))
        boxes.append(box)
        scores.append(score)
    return {k: (np.array(b, dtype=np.float64).reshape(-1, 4), np.array(s, dtype=np.float64))
            for k, (b, s) in per_image.items()}


def _check_record(d, where: str) -> tuple:
    """(image key, box as 4 floats, score) of one detection record; DataError when malformed."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected an object with image_id, category_id, bbox, score")
    key = d.get("image_id", d.get("file_name"))
    if not (is_int(key) or isinstance(key, str)):
        raise DataError(f"{where}: needs an image_id (or a file_name)")
    box, score, category = d.get("bbox"), d.get("score"), d.get("category_id")
    if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise DataError(f"{where}: bbox must be a list of 4 finite numbers x, y, w, h, got {brief(box)}")
    if not is_number(score):
        raise DataError(f"{where}: score must be a finite number, got {brief(score)}")
    if not is_int(category):
        raise DataError(f"{where}: category_id must be an integer, got {brief(category)}")
    return key, [float(v) for v in box], float(score)


def image_keys(file_name: str, image_id=None) -> list:
    """The keys a detection record may use for an image, in the order they are tried: its
    image id (given, else the numeric file stem, as COCO names its files: ASCII digits 0-9), its
    file name as given, its base name."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    if image_id is None and stem.isascii() and stem.isdigit():   # '²³' is digits to isdigit, not to int
        image_id = int(stem)
    keys = [image_id, file_name, os.path.basename(file_name)]
    return [k for i, k in enumerate(keys) if k is not None and k not in keys[:i]]


def find_detections(detections: dict, file_name: str, image_id=None):
    """(key, (boxes, scores)) of the first of `image_keys` that the detections hold, or None."""
    for key in image_keys(file_name, image_id):
        if key in detections:
            return key, detections[key]
    return None


def boxes_for_image(file_name: str, bbox=None, detections: dict | None = None):
    """(boxes, box scores, image id) for one image file, as `refpose infer` takes them.

    `bbox` (K, 4) applies to every image; else the image's `detections` (matched by
    `find_detections`; boxes (0, 4) when it has none); else boxes None, the whole image.
    The image id is the detection key when a record matched by id, else the numeric stem.
    """
    image_id = next((k for k in image_keys(file_name) if is_int(k)), None)
    if detections is None:
        return (None if bbox is None or len(bbox) == 0 else np.asarray(bbox, dtype=np.float64)), None, image_id
    found = find_detections(detections, file_name)
    if found is None:
        return np.zeros((0, 4)), None, image_id
    key, (boxes, scores) = found
    return boxes, scores, (key if is_int(key) else image_id)
