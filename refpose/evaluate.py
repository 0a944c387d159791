"""COCO keypoint evaluation: AP/AR from pycocotools, and the run-and-score loop.

Scoring follows the field: pycocotools `COCOeval(iouType="keypoints")` with its default
(the standard COCO) OKS sigmas, on results in the COCO keypoint-results format
(`image_id`, `category_id`, `keypoints` as 17 x [x, y, score], `score`). The run mode
follows MMPose 0.x `TopDownCocoDataset.evaluate` (and HRNet `lib/dataset/coco.py`): one
pose per person box (ground-truth boxes, or detections), flip test, rescoring (box score x
mean keypoint score above 0.2, done by `estimate`), then OKS-NMS per image at 0.9.

Both the ground truth and the results are checked before pycocotools sees them, so a
mismatch is one `DataError` naming the file and the first bad record, not an assertion
deep inside pycocotools.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, ImageError, RefposeError, WeightsError
from .fileio import write_atomic
from .keypoints import COCO

# COCOeval(iouType="keypoints").stats, in its order; Table 2 of the paper shows the first five
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
NUM_KEYPOINTS = 17
# the standard COCO keypoint sigmas (cocodataset.org, pycocotools Params.kpt_oks_sigmas)
COCO_SIGMAS = COCO.oks_sigmas
OKS_NMS_THR = 0.9          # MMPose / HRNet `oks_thr`
PERSON_CATEGORY = COCO.person_category


# --- reading and checking ----------------------------------------------------------------

def read_json(path: "str | os.PathLike", what: str):
    """Parse a JSON file; any failure is a DataError naming the file and the problem."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a {what} file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a JSON {what} file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in the {what} file: {e.msg} "
                        f"at line {e.lineno} column {e.colno}") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keypoints(v) -> str | None:
    """The problem with a COCO `keypoints` field (17 x [x, y, v] flattened), or None."""
    if not isinstance(v, list):
        return f"keypoints must be a list of {3 * NUM_KEYPOINTS} numbers"
    if len(v) != 3 * NUM_KEYPOINTS:
        return (f"keypoints has {len(v)} numbers, expected {3 * NUM_KEYPOINTS} "
                f"({NUM_KEYPOINTS} keypoints x [x, y, v])")
    if not all(_is_number(x) for x in v):
        return "keypoints holds a value that is not a finite number"
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

    images, by_file, seen = {}, {}, {}
    for i, img in enumerate(d["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise DataError(f"{source}: images[{i}]: needs an integer 'id'")
        if img["id"] in images:
            raise DataError(f"{source}: images[{i}]: image id {img['id']} appears twice")
        images[img["id"]] = img
        name = img.get("file_name")
        if isinstance(name, str):
            for key in {name, os.path.basename(name)}:
                # a base name shared by two images cannot identify either
                by_file[key] = None if key in by_file and by_file[key] != img["id"] else img["id"]
    by_file = {k: v for k, v in by_file.items() if v is not None}

    categories = set()
    for i, cat in enumerate(d["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError(f"{source}: categories[{i}]: needs an integer 'id'")
        categories.add(cat["id"])
    if not categories:
        raise DataError(f"{source}: no categories (COCO keypoints has one: person, id 1)")

    for i, a in enumerate(d["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(a, dict):
            raise DataError(f"{where}: not a JSON object")
        missing = [k for k in ("id", "image_id", "category_id", "keypoints", "num_keypoints", "area",
                               "bbox", "iscrowd") if k not in a]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)} (a COCO keypoint annotation needs them)")
        where = f"{source}: annotation id {a['id']} (annotations[{i}])"
        if not _is_int(a["id"]) or a["id"] in seen:
            raise DataError(f"{where}: 'id' must be an integer unique among the annotations")
        seen[a["id"]] = i
        if a["image_id"] not in images:
            raise DataError(f"{where}: image_id {a['image_id']!r} is not in the images list")
        if a["category_id"] not in categories:
            raise DataError(f"{where}: category_id {a['category_id']!r} is not in the categories list")
        problem = _check_keypoints(a["keypoints"])
        if problem:
            raise DataError(f"{where}: {problem}")
        if not _is_int(a["num_keypoints"]) or not 0 <= a["num_keypoints"] <= NUM_KEYPOINTS:
            raise DataError(f"{where}: num_keypoints must be an integer 0..{NUM_KEYPOINTS}")
        if not _is_number(a["area"]) or a["area"] < 0:
            raise DataError(f"{where}: area must be a non-negative number")
        if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and all(map(_is_number, a["bbox"]))):
            raise DataError(f"{where}: bbox must be [x, y, w, h]")
        if a["iscrowd"] not in (0, 1) or isinstance(a["iscrowd"], bool):
            raise DataError(f"{where}: iscrowd must be 0 or 1")
    return Annotations(d, source, images, by_file)


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
    categories = {c["id"] for c in gt.dataset["categories"]}
    clean = []
    for i, r in enumerate(recs):
        where = f"{source}: record {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: not a JSON object")
        if "image_id" in r:
            image_id = r["image_id"]
            if not _is_number(image_id) or image_id not in gt.images:
                raise DataError(f"{where}: image_id {image_id!r} is not an image of {gt.source}")
            image_id = int(image_id)
        elif "file_name" in r:
            image_id = gt.image_id_of(r["file_name"]) if isinstance(r["file_name"], str) else None
            if image_id is None:
                raise DataError(f"{where}: file_name {r['file_name']!r} is not an image of {gt.source}")
        else:
            raise DataError(f"{where}: needs an image_id (or a file_name of {gt.source})")
        if "keypoints" not in r:
            raise DataError(f"{where}: no keypoints")
        problem = _check_keypoints(r["keypoints"])
        if problem:
            raise DataError(f"{where}: {problem}")
        if not _is_number(r.get("score")):
            raise DataError(f"{where}: needs a finite number 'score'")
        category = r.get("category_id", PERSON_CATEGORY)
        if category not in categories:
            raise DataError(f"{where}: category_id {category!r} is not a category of {gt.source}")
        clean.append({"image_id": image_id, "category_id": category,
                      "keypoints": [float(v) for v in r["keypoints"]], "score": float(r["score"])})
    return clean


# --- scoring -------------------------------------------------------------------------------

def coco_eval(gt: Annotations, records: list[dict], image_ids=None) -> dict:
    """COCOeval(keypoints) of checked records; the ten stats by name (None where undefined).

    pycocotools reports -1 for a figure it cannot define (no ground truth in an area
    range); that becomes None. `image_ids` restricts the evaluation to those images
    (default: every image of the ground truth, as COCOeval does).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # COCOeval writes `ignore` into the ground-truth annotations and loadRes adds fields to
    # the results: give it copies, so that a loaded ground truth can be scored again
    dataset = dict(gt.dataset, annotations=[dict(a) for a in gt.dataset["annotations"]])
    with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if records:
            coco_dt = coco_gt.loadRes([dict(r) for r in records])
        else:
            # loadRes cannot take an empty list; no poses at all is a valid (zero) result
            coco_dt = COCO()
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


# --- OKS-NMS --------------------------------------------------------------------------------

def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray,
            sigmas: np.ndarray = COCO_SIGMAS) -> np.ndarray:
    """Object keypoint similarity of one pose `g` (17, 3) to poses `d` (N, 17, 3).

    MMPose `core/post_processing/nms.py: oks_iou` (from HRNet): the COCO OKS with the
    mean of the two areas as the scale and every keypoint counted, in float32 as there.
    """
    var = (2 * sigmas) ** 2                                           # (17,)
    d2 = (d[:, :, 0] - g[:, 0]) ** 2 + (d[:, :, 1] - g[:, 1]) ** 2    # (N, 17)
    e = d2 / var / ((area_g + area_d[:, None]) / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(axis=1).astype(np.float32)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            thr: float = OKS_NMS_THR, sigmas: np.ndarray = COCO_SIGMAS) -> list[int]:
    """Greedy NMS on OKS: indices of the poses kept, best score first.

    MMPose `oks_nms` (HRNet `nms/nms.py`): take the best remaining pose, drop every pose
    whose OKS to it exceeds `thr`, repeat.
    """
    order = np.asarray(scores).argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        ovr = oks_iou(keypoints[i], keypoints[order[1:]], areas[i], areas[order[1:]], sigmas)
        order = order[1:][ovr <= thr]
    return keep


# --- run and score --------------------------------------------------------------------------

PROGRESS_SUFFIX = ".progress.jsonl"
PROGRESS_FORMAT = "refpose-eval-progress/1"


def gt_person_boxes(gt: Annotations) -> dict[int, np.ndarray]:
    """Ground-truth person boxes per image id, (K, 4) xywh, as MMPose takes them (`use_gt_bbox`).

    The persons are those with labelled keypoints and a positive area (MMPose 0.x
    `_load_coco_keypoint_annotation_kernel`, HRNet `_load_coco_keypoint_annotation_kernal`),
    so crowd regions, which have none, are left out. The box is clipped to the image,
    x in [0, width - 1] and y in [0, height - 1], as MMPose 1.x `parse_data_info` does, and
    dropped when nothing is left of it.
    """
    boxes = {image_id: [] for image_id in gt.images}
    for a in gt.dataset["annotations"]:
        box = person_box(a, gt.images[a["image_id"]])
        if box is not None:
            boxes[a["image_id"]].append(box)
    return {k: np.array(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items()}


def person_box(a: dict, img: dict) -> list[float] | None:
    """The box [x, y, w, h] of a checked annotation clipped to its image, or None when it is
    not a person to take (no labelled keypoint, no area, nothing left after clipping); the
    rules of `gt_person_boxes`, which training follows too."""
    if a["num_keypoints"] == 0 or max(a["keypoints"]) == 0 or a["area"] <= 0:
        return None
    width, height = (img.get(k) if _is_number(img.get(k)) else math.inf for k in ("width", "height"))
    x, y, w, h = a["bbox"]
    x1, y1 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    x2, y2 = min(max(x + w, 0), width - 1), min(max(y + h, 0), height - 1)
    return [x1, y1, x2 - x1, y2 - y1] if x2 > x1 and y2 > y1 else None


def detections_per_image(path: str, gt: Annotations) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person detections (boxes (K, 4), scores (K,)) per image id of the ground truth.

    `topdown.load_detections` reads the file (persons, score >= 0, as HRNet evaluates);
    records keyed by `file_name` are mapped through the ground truth's images. Detections of
    images the ground truth does not have are left out (a detection file often covers a whole
    split), but a file that shares no image with the ground truth is refused.
    """
    from .topdown import load_detections

    empty = (np.zeros((0, 4)), np.zeros(0))
    per_image = {image_id: empty for image_id in gt.images}
    matched = 0
    for key, dets in load_detections(path).items():
        image_id = key if key in gt.images else gt.image_id_of(key) if isinstance(key, str) else None
        if image_id is not None:
            per_image[image_id] = dets
            matched += 1
    if not matched:
        raise DataError(f"{path}: no detection belongs to an image of {gt.source}")
    return per_image


@dataclass(frozen=True)
class ImageJob:
    """One image to run: its id, its path, and the person boxes (K, 4) xywh with scores (K,)."""

    image_id: int
    path: str
    boxes: np.ndarray
    box_scores: np.ndarray


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself (a model object does not cross processes)."""

    weights: str | None = None
    config: str | None = None
    dtype: str = "float32"


class Predictor:
    """Runs one image: top-down poses on its boxes, flip test, OKS-NMS; COCO records out."""

    def __init__(self, spec: ModelSpec, flip: bool = True):
        from .topdown import default_model

        self.model = default_model(weights=spec.weights, config=spec.config, dtype=spec.dtype)
        self.flip = flip

    def __call__(self, job: ImageJob) -> tuple[int, list[dict] | None, str | None]:
        """(image id, records, None), or (image id, None, the problem) for a missing image."""
        from .imageio import read_image
        from .topdown import estimate, to_coco_records

        if len(job.boxes) == 0:
            # nobody to look at: the image is not decoded, only its presence is checked
            if not os.path.isfile(job.path):
                return job.image_id, None, "no such file"
            return job.image_id, [], None
        try:
            image = read_image(job.path)
        except ImageError as e:
            return job.image_id, None, _strip_path(str(e), job.path)
        try:
            poses = estimate(image, self.model, job.boxes, box_scores=job.box_scores, flip=self.flip)
        except RefposeError as e:      # a box the pipeline refuses: name the image it belongs to
            raise type(e)(f"{job.path}: {e}") from None
        if not poses:
            return job.image_id, [], None
        keypoints = np.stack([p["keypoints"] for p in poses])                 # (K, 17, 3)
        scores = np.array([p["score"] for p in poses])                        # rescored by estimate
        # MMPose's area for OKS-NMS is that of the padded, aspect-fixed crop: scale w x h in pixels
        areas = np.array([p["scale"][0] * p["scale"][1] for p in poses])
        records = to_coco_records([poses[i] for i in oks_nms(keypoints, scores, areas)], image_id=job.image_id)
        for r in records:
            # the COCO keypoint-results format has no box; with one, pycocotools' loadRes would
            # take the box area for APm/APl (see load_results)
            del r["bbox"]
        return job.image_id, records, None


def _strip_path(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# each worker process holds one Predictor, built once by the pool's initializer (or the
# error that building it raised: an initializer that raises makes the pool respawn forever)
_worker_predictor: "Predictor | RefposeError | None" = None


def _single_threaded_blas():
    """A context in which BLAS runs on one thread.

    A BLAS matrix product can round differently with another number of threads (OpenBLAS
    float32: ~1e-6), so every process that runs the model uses one: the poses are then the
    same for any `workers`. Parallelism comes from the worker processes (and from Numba,
    whose kernels write each output once and so do not depend on the thread count).
    Without threadpoolctl BLAS keeps its threads, and that guarantee with it.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _init_worker(spec: ModelSpec, flip: bool, threads: int) -> None:
    global _worker_predictor
    # Ctrl-C reaches the whole process group: the parent handles it and ends the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _single_threaded_blas()                          # for the life of this worker process
    try:
        import numba
        numba.set_num_threads(threads)   # the workers share the cores
    except (ImportError, ValueError):
        pass
    try:
        _worker_predictor = Predictor(spec, flip)
    except RefposeError as e:
        _worker_predictor = e


def _run_in_worker(job: ImageJob):
    if isinstance(_worker_predictor, RefposeError):
        raise _worker_predictor
    return _worker_predictor(job)


@dataclass
class EvalRun:
    """What `evaluate_images` did: the figures and how they were obtained."""

    stats: dict                        # the ten figures by name (None where pycocotools says -1)
    results_path: str
    records: int                       # poses written to the results file
    images: int                        # images asked for (after `limit`)
    scored: list                       # ids of the images the figures cover
    resumed: int                       # images taken from the progress file of an earlier run
    missing: list = field(default_factory=list)   # (path, problem) of images that could not be read
    boxes: str = "ground-truth person boxes"


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_key(spec: ModelSpec) -> str:
    """The digest of the weights file the model comes from, or how its weights were made."""
    from .topdown import DEFAULT_CONFIG, default_weights_path

    if spec.weights is not None and not os.path.isfile(spec.weights):
        raise WeightsError(f"{spec.weights}: no such weights file")
    path = spec.weights or default_weights_path(spec.config or DEFAULT_CONFIG)
    return _file_digest(str(path)) if path is not None else "untrained, seed 0"


def _read_progress(path: str, settings: dict, gt: Annotations) -> dict[int, list[dict]]:
    """Finished images of an earlier run with the same settings: {image id: records}."""
    with open(path, encoding="utf-8", errors="replace") as f:   # garbage fails the header check
        lines = f.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != PROGRESS_FORMAT:
        raise DataError(f"{path}: not a refpose eval progress file; delete it or pass --restart")
    if header.get("settings") != settings:
        diff = sorted(k for k in settings if header.get("settings", {}).get(k) != settings[k])
        raise DataError(f"{path}: an earlier run with other settings ({', '.join(diff)}) left this "
                        "progress file; pass --restart to start over")
    done = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            done[int(entry["image_id"])] = entry["records"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n == len(lines):           # the last line of an interrupted write: redo that image
                break
            raise DataError(f"{path}: line {n} is damaged; pass --restart to start over") from None
    unknown = [i for i in done if i not in gt.images]
    if unknown:
        raise DataError(f"{path}: image id {unknown[0]} is not an image of {gt.source}; "
                        "pass --restart to start over")
    return done


def _run_jobs(jobs: list[ImageJob], spec: ModelSpec, flip: bool, workers: int):
    """Yield (image id, records, problem) per job: in order in this process when `workers`
    is 1, else as worker processes finish them (each loads the model once)."""
    if not jobs:
        return
    if workers == 1:
        predictor = Predictor(spec, flip)
        with _single_threaded_blas():
            for job in jobs:
                yield predictor(job)
        return
    import multiprocessing

    # spawn, not fork: a forked child would inherit the parent's BLAS and Numba thread pools
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ctx.Pool(min(workers, len(jobs)), _init_worker, (spec, flip, threads)) as pool:
        yield from pool.imap_unordered(_run_in_worker, jobs)


def evaluate_images(ann, images: "str | os.PathLike", *, boxes: "str | os.PathLike | None" = None,
                    weights: "str | os.PathLike | None" = None, config: str | None = None,
                    dtype: str = "float32", flip: bool = True,
                    results_out: "str | os.PathLike" = "result_keypoints.json",
                    limit: int | None = None, workers: int = 1, restart: bool = False,
                    progress: bool | None = None) -> EvalRun:
    """Run top-down pose estimation over the annotated images and score the results.

    MMPose `TopDownCocoDataset` protocol: one pose per person box (the ground truth's when
    `boxes` is None, else the detections of a COCO detection-results file), flip test,
    rescoring, OKS-NMS per image at 0.9; then COCOeval over the images that were found.
    Each finished image is appended to `<results_out>.progress.jsonl`, so an interrupted
    run started again with the same settings skips them; the file is removed once every
    image is done (kept after a `limit` run, which a longer one then continues).
    `workers` > 1 spreads images over processes that each load the model once; BLAS runs
    on one thread in each, so the records do not depend on `workers`. Images that are
    missing or unreadable are listed in `EvalRun.missing` and left out of the figures
    (COCOeval's `imgIds` are the images that were run); images without a person box are
    only looked for, not decoded.
    """
    from tqdm import tqdm

    gt = load_annotations(ann)
    images = str(images)
    if not os.path.isdir(images):
        raise DataError(f"{images}: no such image directory")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    for img in gt.images.values():
        if not isinstance(img.get("file_name"), str):
            raise DataError(f"{gt.source}: image {img['id']} has no file_name to find it by in {images}")

    if boxes is None:
        per_image = {k: (b, np.ones(len(b))) for k, b in gt_person_boxes(gt).items()}
        box_source, boxes_key = "ground-truth person boxes", "ground truth"
    else:
        per_image = detections_per_image(str(boxes), gt)
        box_source, boxes_key = f"detections from {boxes}", _file_digest(str(boxes))
    jobs = [ImageJob(image_id, os.path.join(images, img["file_name"]), *per_image[image_id])
            for image_id, img in list(gt.images.items())[:limit]]

    spec = ModelSpec(None if weights is None else str(weights), config, dtype)
    # what the poses depend on: a progress file written with other settings is not reused
    settings = {"annotations": _file_digest(gt.source) if os.path.isfile(gt.source) else None,
                "weights": _weights_key(spec), "config": config, "dtype": dtype, "flip": bool(flip),
                "boxes": boxes_key}
    results_out = str(results_out)
    if os.path.isdir(results_out):
        raise DataError(f"{results_out}: is a directory; --results-out names the results file")
    progress_path = results_out + PROGRESS_SUFFIX
    try:
        os.makedirs(os.path.dirname(os.path.abspath(results_out)), exist_ok=True)   # as write_atomic does
        if restart or not os.path.exists(progress_path):
            done = {}
            with open(progress_path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": PROGRESS_FORMAT, "settings": settings}) + "\n")
        else:
            done = _read_progress(progress_path, settings, gt)
    except OSError as e:
        raise DataError(f"{progress_path}: cannot write the progress file: {e.strerror or e}") from None
    resumed = sum(job.image_id in done for job in jobs)
    todo = [job for job in jobs if job.image_id not in done]

    missing = []
    with open(progress_path, "a", encoding="utf-8") as log, \
            tqdm(total=len(jobs), initial=resumed, desc="eval", unit="img",
                 disable=None if progress is None else not progress) as bar:
        for image_id, records, problem in _run_jobs(todo, spec, flip, workers):
            if problem is None:
                done[image_id] = records
                log.write(json.dumps({"image_id": image_id, "records": records}) + "\n")
                log.flush()
            else:
                missing.append((os.path.join(images, gt.images[image_id]["file_name"]), problem))
            bar.update()

    scored = [job.image_id for job in jobs if job.image_id in done]
    if not scored:
        raise DataError(f"{images}: none of the {len(jobs)} images of {gt.source} could be read "
                        f"(first: {missing[0][0]}: {missing[0][1]})")
    records = [r for image_id in scored for r in done[image_id]]
    write_atomic(results_out, json.dumps(records).encode())
    if not missing and len(jobs) == len(gt.images):
        os.unlink(progress_path)      # kept after a --limit run, so that a longer one continues it
    stats = coco_eval(gt, load_results(records, gt) if records else [], image_ids=scored)
    missing.sort()
    return EvalRun(stats, results_out, len(records), len(jobs), scored, resumed, missing, box_source)
