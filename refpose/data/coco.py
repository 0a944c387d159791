"""COCO keypoint files and their scoring: reading and checking ground truth and results, COCOeval.

Scoring follows the field: pycocotools `COCOeval(iouType="keypoints")` with its default
(the standard COCO) OKS sigmas, on results in the COCO keypoint-results format
(`image_id`, `category_id`, `keypoints` as 17 x [x, y, score], `score`).

Both the ground truth and the results are checked before pycocotools sees them, so a
mismatch is one `DataError` naming the file and the first bad record, not an assertion
deep inside pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field

from ..fileio import brief, is_int, is_number
from ..errors import DataError
from ..fileio import read_json  # noqa: F401  (scoring.read_json: one JSON reader for every input file)
from ..keypoints import COCO

# COCOeval(iouType="keypoints").stats, in its order; Table 2 of the paper shows the first five
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
NUM_KEYPOINTS = COCO.num_joints
PERSON_CATEGORY = COCO.person_category


# --- reading and checking ----------------------------------------------------------------

MAX_COORDINATE = 1e6     # pixels: beyond any image refpose reads (200 MP), far below where squares overflow


def _check_keypoints(v) -> str | None:
    """The problem with a COCO `keypoints` field (17 x [x, y, v] flattened), or None. A coordinate
    beyond MAX_COORDINATE is no pixel of any image (and 1e300 overflows OKS and the crop affine)."""
    if not isinstance(v, list):
        return f"keypoints must be a list of {3 * NUM_KEYPOINTS} numbers"
    if len(v) != 3 * NUM_KEYPOINTS:
        return (f"keypoints has {len(v)} numbers, expected {3 * NUM_KEYPOINTS} "
                f"({NUM_KEYPOINTS} keypoints x [x, y, v])")
    bad = next((i for i, x in enumerate(v) if not is_number(x)), None)
    if bad is not None:
        return f"keypoints[{bad}] is not a finite number, got {brief(v[bad])}"
    far = next((i for i, x in enumerate(v) if i % 3 != 2 and abs(x) > MAX_COORDINATE), None)
    if far is not None:
        return f"keypoints[{far}] = {v[far]:g} is a coordinate beyond {MAX_COORDINATE:,.0f} pixels"
    return None


@dataclass
class Annotations:
    """A checked COCO keypoint ground truth: the dataset dict pycocotools takes, and lookups."""

    dataset: dict
    source: str
    images: dict = field(repr=False)          # image id -> image entry
    by_file: dict = field(repr=False)         # file name and its base name -> image id

    def image_id_of(self, file_name: str) -> int | None:
        return self.by_file.get(file_name, self.by_file.get(os.path.basename(file_name)))


def load_annotations(ann: "str | os.PathLike | dict | Annotations") -> Annotations:
    """Read and check a COCO keypoint ground truth (a path or the parsed dict).

    Checked are the fields COCOeval reads: images with an int `id`; categories with an
    `id`; annotations with `id`, `image_id`, `category_id`, `keypoints` (51 numbers),
    `num_keypoints`, `area`, `bbox` and `iscrowd`, each referring to a known image and
    category. The first bad entry is named in the DataError.
    """
    if isinstance(ann, Annotations):
        return ann
    if isinstance(ann, dict):
        source, d = "annotations", ann
    else:
        source, d = str(ann), read_json(ann, "annotations")
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a COCO annotations file (expected a JSON object "
                        f"with images, annotations, categories; got a {type(d).__name__})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(f"{source}: not a COCO annotations file: no {key!r} list")
    images, by_file = _index_images(d["images"], source)
    categories = _category_ids(d["categories"], source)
    seen = set()
    for i, a in enumerate(d["annotations"]):
        _check_annotation(a, source, i, images, categories, seen)
    return Annotations(d, source, images, by_file)


def _index_images(entries: list, source: str) -> tuple[dict, dict]:
    """{image id: image entry} and {file name and base name: image id} of the images list."""
    images, by_file = {}, {}
    for i, img in enumerate(entries):
        if not isinstance(img, dict) or not is_int(img.get("id")):
            raise DataError(f"{source}: images[{i}]: needs an integer 'id'")
        if img["id"] in images:
            raise DataError(f"{source}: images[{i}]: image id {img['id']} appears twice")
        images[img["id"]] = img
        name = img.get("file_name")
        if isinstance(name, str):
            for key in {name, os.path.basename(name)}:
                # a base name shared by two images cannot identify either
                by_file[key] = None if key in by_file and by_file[key] != img["id"] else img["id"]
    return images, {k: v for k, v in by_file.items() if v is not None}


def _category_ids(entries: list, source: str) -> set:
    categories = set()
    for i, cat in enumerate(entries):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise DataError(f"{source}: categories[{i}]: needs an integer 'id'")
        categories.add(cat["id"])
    if not categories:
        raise DataError(f"{source}: no categories (COCO keypoints has one: person, id 1)")
    return categories


ANNOTATION_FIELDS = ("id", "image_id", "category_id", "keypoints", "num_keypoints", "area", "bbox", "iscrowd")


def _check_annotation(a, source: str, i: int, images: dict, categories: set, seen: set) -> None:
    """DataError naming the annotation when a field COCOeval reads is missing or malformed."""
    where = f"{source}: annotations[{i}]"
    if not isinstance(a, dict):
        raise DataError(f"{where}: not a JSON object")
    missing = [k for k in ANNOTATION_FIELDS if k not in a]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (a COCO keypoint annotation needs them)")
    if not is_int(a["id"]) or a["id"] in seen:
        raise DataError(f"{where}: 'id' must be an integer unique among the annotations, got {brief(a['id'])}")
    where = f"{source}: annotation id {a['id']} (annotations[{i}])"
    seen.add(a["id"])
    for key, known, name in (("image_id", images, "images"), ("category_id", categories, "categories")):
        if not is_int(a[key]) or a[key] not in known:
            raise DataError(f"{where}: {key} {brief(a[key])} is not in the {name} list")
    problem = _check_keypoints(a["keypoints"])
    if problem:
        raise DataError(f"{where}: {problem}")
    if not is_int(a["num_keypoints"]) or not 0 <= a["num_keypoints"] <= NUM_KEYPOINTS:
        raise DataError(f"{where}: num_keypoints must be an integer 0..{NUM_KEYPOINTS}")
    if not is_number(a["area"]) or a["area"] < 0:
        raise DataError(f"{where}: area must be a non-negative finite number, got {brief(a['area'])}")
    if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and all(map(is_number, a["bbox"]))):
        raise DataError(f"{where}: bbox must be [x, y, w, h]")
    if max(map(abs, a["bbox"])) > MAX_COORDINATE:
        raise DataError(f"{where}: bbox {a['bbox']} has a coordinate beyond {MAX_COORDINATE:,.0f} pixels")
    if a["iscrowd"] not in (0, 1) or isinstance(a["iscrowd"], bool):
        raise DataError(f"{where}: iscrowd must be 0 or 1")


def load_results(results: "str | os.PathLike | list", gt: Annotations) -> list[dict]:
    """Read and check keypoint results against the ground truth; return clean records.

    A record needs `keypoints` (51 numbers), a finite `score`, and `image_id` (an image
    of the ground truth) or `file_name` (mapped to its image id through the ground
    truth's images, exactly or by base name, as `refpose infer` writes them).
    `category_id` defaults to person. Other fields are dropped, `bbox` included: given
    a `bbox`, pycocotools' `loadRes` would treat the records as box results and take the
    box area instead of the keypoints' extent for the medium/large split, so APm/APl
    would depend on the crop box. The COCO keypoint-results format has no box.
    """
    if isinstance(results, list):
        source, recs = "results", results
    else:
        source, recs = str(results), read_json(results, "results")
    if not isinstance(recs, list):
        raise DataError(f"{source}: results must be a JSON list of records, got a {type(recs).__name__}")
    if not recs:
        raise DataError(f"{source}: the results list is empty")
    return [check_result(r, gt, f"{source}: record {i}") for i, r in enumerate(recs)]


def check_result(r, gt: Annotations, where: str) -> dict:
    """One keypoint-results record checked against the ground truth (see `load_results`), as the
    clean record pycocotools takes; DataError naming `where` and the field at fault. The one rule
    for a result record: results files and the evaluation's progress file are both read with it."""
    if not isinstance(r, dict):
        raise DataError(f"{where}: not a JSON object")
    if "image_id" in r:
        image_id = r["image_id"]
        if not is_number(image_id) or image_id not in gt.images:
            raise DataError(f"{where}: image_id {brief(image_id)} is not an image of {gt.source}")
        image_id = int(image_id)
    elif "file_name" in r:
        image_id = gt.image_id_of(r["file_name"]) if isinstance(r["file_name"], str) else None
        if image_id is None:
            raise DataError(f"{where}: file_name {brief(r['file_name'])} is not an image of {gt.source}")
    else:
        raise DataError(f"{where}: needs an image_id (or a file_name of {gt.source})")
    if "keypoints" not in r:
        raise DataError(f"{where}: no keypoints")
    problem = _check_keypoints(r["keypoints"])
    if problem:
        raise DataError(f"{where}: {problem}")
    if not is_number(r.get("score")):
        raise DataError(f"{where}: needs a finite number 'score', got {brief(r.get('score'))}")
    category = r.get("category_id", PERSON_CATEGORY)
    if not is_int(category) or category not in {c["id"] for c in gt.dataset["categories"]}:
        raise DataError(f"{where}: category_id {brief(category)} is not a category of {gt.source}")
    return {"image_id": image_id, "category_id": category,
            "keypoints": [float(v) for v in r["keypoints"]], "score": float(r["score"])}


# --- scoring -------------------------------------------------------------------------------

def coco_eval(gt: Annotations, records: list[dict], image_ids=None) -> dict:
    """COCOeval(keypoints) of checked records; the ten stats by name (None where undefined).

    pycocotools reports -1 for a figure it cannot define (no ground truth in an area
    range); that becomes None. `image_ids` restricts the evaluation to those images
    (default: every image of the ground truth, as COCOeval does).
    """
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    # COCOeval writes `ignore` into the ground-truth annotations and loadRes adds fields to
    # the results: give it copies, so that a loaded ground truth can be scored again
    dataset = dict(gt.dataset, annotations=[dict(a) for a in gt.dataset["annotations"]])
    with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints progress
        coco_gt = CocoApi()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if records:
            coco_dt = coco_gt.loadRes([dict(r) for r in records])
        else:
            # loadRes cannot take an empty list; no poses at all is a valid (zero) result
            coco_dt = CocoApi()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (None if s < 0 else float(s)) for name, s in zip(STAT_NAMES, ev.stats)}


def score_results(ann, results, image_ids=None) -> dict:
    """COCO keypoint AP/AR of a results file (or list) against a ground truth (path or dict).

    Returns {"AP": ..., "AP50": ..., ..., "ARl": ...}, the ten figures of pycocotools'
    keypoint summary in its order.
    """
    gt = load_annotations(ann)
    return coco_eval(gt, load_results(results, gt), image_ids)


def format_stats(stats: dict) -> str:
    """The ten figures as a two-line table (three decimals, as pycocotools prints them)."""
    cells = ["n/a" if stats[k] is None else f"{stats[k]:.3f}" for k in STAT_NAMES]
    return ("  ".join(f"{k:>5}" for k in STAT_NAMES) + "\n" + "  ".join(f"{c:>5}" for c in cells))
