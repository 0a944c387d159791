"""`refpose eval --images`: run the top-down pipeline over annotated images, resumably, and score it.

The run follows MMPose 0.x `TopDownCocoDataset.evaluate` (and HRNet `lib/dataset/coco.py`):
one pose per person box (ground-truth boxes, or detections), flip test, rescoring (box
score x mean keypoint score above 0.2), then OKS-NMS per image at 0.9 — all done by
`refpose.pose.pipeline.predict` — and COCOeval over the images that were run (`refpose.data.coco`).
Each finished image is appended to a progress file, so an interrupted run resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from ..pose.boxes import find_detections, load_detections
from ..errors import DataError, ImageError, RefposeError, WeightsError
from ..fileio import (InputFiles, LineLog, brief, check_output_path, is_int, is_number, name_in_folder, path_problem,
                      write_atomic)
from ..pose.nms import OKS_NMS_THR
from ..threads import available_cores
from .coco import Annotations, check_result, coco_eval, load_annotations, load_results

PROGRESS_SUFFIX = ".progress.jsonl"
PROGRESS_FORMAT = "refpose-eval-progress/1"


# --- what to run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself (a model object does not cross processes)."""

    weights: str | None = None
    config: str | None = None
    dtype: str = "float32"


@dataclass(frozen=True)
class RunOptions:
    """How to run: flip test, the first `limit` images only, worker processes, start over."""

    flip: bool = True
    limit: int | None = None
    workers: int = 1
    restart: bool = False

    def check(self) -> "RunOptions":
        """These options, with `workers` capped at the cores this process may use (said in a
        warning: more processes than cores only share them, each with its own model)."""
        if self.limit is not None and self.limit < 1:
            raise DataError(f"limit must be a positive number of images, got {self.limit}")
        if self.workers < 1:
            raise DataError(f"workers must be at least 1, got {self.workers}")
        cores = available_cores()
        if self.workers > cores:
            warnings.warn(f"{self.workers} workers asked for, {cores} core{'s' if cores != 1 else ''} here: "
                          f"running {cores}", RuntimeWarning, stacklevel=3)
            return replace(self, workers=cores)
        return self


@dataclass(frozen=True)
class ImageJob:
    """One image to run: its id, its path, and the person boxes (K, 4) xywh with scores (K,)."""

    image_id: int
    path: str
    boxes: np.ndarray
    box_scores: np.ndarray


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


# --- person boxes ------------------------------------------------------------------------------

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
    width, height = (img.get(k) if is_number(img.get(k)) else math.inf for k in ("width", "height"))
    x, y, w, h = a["bbox"]
    x1, y1 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    x2, y2 = min(max(x + w, 0), width - 1), min(max(y + h, 0), height - 1)
    return [x1, y1, x2 - x1, y2 - y1] if x2 > x1 and y2 > y1 else None


def detections_per_image(path: str, gt: Annotations) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person detections (boxes (K, 4), scores (K,)) per image id of the ground truth.

    `load_detections` reads the file (persons, score >= 0, as HRNet evaluates) and
    `find_detections` matches its records to each image (by image id, file name or numeric
    stem). Detections of images the ground truth does not have are left out (a detection
    file often covers a whole split), but a file that shares no image with it is refused.
    """
    detections = load_detections(path)
    empty = (np.zeros((0, 4)), np.zeros(0))
    per_image = {}
    for image_id, img in gt.images.items():
        found = find_detections(detections, img.get("file_name") or "", image_id)
        per_image[image_id] = found[1] if found else empty
    if not any(len(boxes) for boxes, _ in per_image.values()):
        raise DataError(f"{path}: no detection belongs to an image of {gt.source}")
    return per_image


def check_image_folder(images: str) -> None:
    """DataError with the real reason when the image folder of a run cannot be used."""

    problem = path_problem(images, folder=True)
    if problem:
        raise DataError(f"{images}: cannot use as the image directory: {problem}")


def make_jobs(gt: Annotations, images: str, boxes: str | None, limit: int | None) -> tuple[list[ImageJob], str]:
    """The images to run with their boxes, and where the boxes come from."""
    paths = {}
    for image_id, img in gt.images.items():
        if not isinstance(img.get("file_name"), str):
            raise DataError(f"{gt.source}: image {img['id']} has no file_name to find it by in {images}")
        paths[image_id], problem = name_in_folder(images, img["file_name"])
        if problem:
            raise DataError(f"{gt.source}: image {img['id']}: {problem}")
    if boxes is None:
        per_image = {k: (b, np.ones(len(b))) for k, b in gt_person_boxes(gt).items()}
        source = "ground-truth person boxes"
    else:
        per_image, source = detections_per_image(boxes, gt), f"detections from {boxes}"
    jobs = [ImageJob(image_id, paths[image_id], *per_image[image_id]) for image_id in list(gt.images)[:limit]]
    return jobs, source


# --- running one image ---------------------------------------------------------------------------

class Predictor:
    """Runs images: top-down poses on their boxes, flip test, OKS-NMS; COCO records out."""

    def __init__(self, spec: ModelSpec | None = None, flip: bool = True, model=None):
        """The model of `spec`, or `model` itself when given (training's validation passes the
        network being trained)."""
        from ..pose.pipeline import PoseOptions
        from ..pretrained import default_model

        spec = spec or ModelSpec()
        self.model = model if model is not None else default_model(weights=spec.weights, config=spec.config,
                                                                     dtype=spec.dtype)
        self.options = PoseOptions(flip=flip, oks_nms=OKS_NMS_THR)

    def __call__(self, jobs: list[ImageJob]) -> list[tuple[int, list[dict] | None, str | None]]:
        return list(self.run(jobs))

    def run(self, jobs: list[ImageJob]):
        """Per job, as they are done: (image id, records, None), or (image id, None, the problem)
        for a missing image. The image driver runs them (`refpose.pose.driver.run_images`); an
        image without a person box is only looked for, not decoded."""
        from ..pose.driver import ImageInput, run_images

        inputs = (ImageInput(path=job.path, boxes=job.boxes, box_scores=job.box_scores, image_id=job.image_id)
                  for job in jobs)
        for job, result in zip(jobs, run_images(inputs, self.model, self.options)):
            if isinstance(result.error, ImageError):
                yield job.image_id, None, _strip_path(str(result.error), job.path)
                continue
            if result.error is not None:               # a box the pipeline refuses: the run stops
                raise result.error
            for r in result.records:
                # the COCO keypoint-results format has no box; with one, pycocotools' loadRes would
                # take the box area for APm/APl (see coco.load_results)
                del r["bbox"]
            yield job.image_id, result.records, None


def _strip_path(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


class _Worker:
    """The pool's initializer and task of one worker process: it builds its Predictor once.

    An initializer that raises makes the pool respawn the worker forever, so a model that
    cannot be built is kept as the error and raised by the first task instead.
    """

    predictor: "Predictor | RefposeError | None" = None     # one per worker process

    @classmethod
    def start(cls, spec: ModelSpec, flip: bool, threads: int) -> None:
        from ..threads import single_threaded_blas, set_kernel_threads

        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the group: the parent ends the pool
        single_threaded_blas()                          # for the life of this worker process
        set_kernel_threads(threads)                     # the workers share the cores
        try:
            cls.predictor = Predictor(spec, flip)
        except RefposeError as e:
            cls.predictor = e

    @classmethod
    def run(cls, jobs: list[ImageJob]):
        if isinstance(cls.predictor, RefposeError):
            raise cls.predictor
        return cls.predictor(jobs)


def run_jobs(jobs: list[ImageJob], spec: ModelSpec, flip: bool, workers: int):
    """Yield (image id, records, problem) per job: in order in this process when `workers`
    is 1, else as worker processes finish them (each loads the model once; a task is as many
    images as share forward passes). BLAS runs on one thread in every process, so the records
    do not depend on `workers`."""
    from ..pose.driver import IMAGES_PER_FORWARD
    from ..threads import single_threaded_blas

    if not jobs:
        return
    if workers == 1:
        predictor = Predictor(spec, flip)
        with single_threaded_blas():
            yield from predictor.run(jobs)
        return
    chunks = [jobs[i:i + IMAGES_PER_FORWARD] for i in range(0, len(jobs), IMAGES_PER_FORWARD)]
    import multiprocessing

    # spawn, not fork: a forked child would inherit the parent's BLAS and Numba thread pools
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, available_cores() // workers)
    with ctx.Pool(min(workers, len(chunks)), _Worker.start, (spec, flip, threads)) as pool:
        for results in pool.imap_unordered(_Worker.run, chunks):
            yield from results


# --- progress: resuming an interrupted run -------------------------------------------------------

def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_key(spec: ModelSpec) -> str:
    """The digest of the weights file the model comes from, or how its weights were made."""
    from ..pretrained import DEFAULT_CONFIG, default_weights_path
    from ..weights import weights_path

    if spec.weights is not None:
        problem = path_problem(weights_path(spec.weights), kind="a weights file")
        if problem:
            raise WeightsError(f"{spec.weights}: {problem if problem != 'no such file' else 'no such weights file'}")
    path = weights_path(spec.weights) if spec.weights else default_weights_path(spec.config or DEFAULT_CONFIG)
    return _file_digest(str(path)) if path is not None else "untrained, seed 0"


def run_settings(gt: Annotations, spec: ModelSpec, flip: bool, boxes: str | None) -> dict:
    """What the poses depend on: a progress file written with other settings is not reused."""
    return {"annotations": _file_digest(gt.source) if os.path.isfile(gt.source) else None,
            "weights": _weights_key(spec), "config": spec.config, "dtype": spec.dtype, "flip": bool(flip),
            "boxes": "ground truth" if boxes is None else _file_digest(boxes)}


def open_progress(path: str, settings: dict, gt: Annotations, restart: bool) -> tuple[LineLog, dict[int, list[dict]]]:
    """The progress file, locked for this run (another run writing it is refused), and the
    finished images of an earlier run with the same settings ({image id: records}); a new file,
    an empty one (a crash before its first line was whole) or `restart` starts over."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)   # as write_atomic does
    except OSError as e:
        raise DataError(f"{path}: cannot write the progress file: {e.strerror or e}") from None
    log = LineLog(path, busy="another `refpose eval` is writing this progress file (the same --results-out); "
                  "let it finish, or give another --results-out")
    try:
        if restart or not log.lines:
            log.reset(json.dumps({"format": PROGRESS_FORMAT, "settings": settings}, allow_nan=False))
            return log, {}
        return log, read_progress(log.lines, path, settings, gt)
    except OSError as e:
        log.close()
        raise DataError(f"{path}: cannot write the progress file: {e.strerror or e}") from None
    except BaseException:
        log.close()
        raise


def read_progress(lines: list[str], path: str, settings: dict, gt: Annotations) -> dict[int, list[dict]]:
    """The finished images of an earlier run with the same settings: {image id: records}.

    Every line is checked here, once, before any image is run again or anything is written: a
    header with these settings, then one JSON object per line with `image_id` (an image of the
    ground truth) and `records`, each record a keypoint result of that image
    (`refpose.data.coco.check_result`: finite numbers, known category). A damaged line is a
    DataError naming it; a torn last line was already cut off (`refpose.fileio.LineLog`)."""
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, RecursionError, IndexError):
        header = None
    if not isinstance(header, dict) or header.get("format") != PROGRESS_FORMAT:
        raise DataError(f"{path}: not a refpose eval progress file; delete it or pass --restart")
    if header.get("settings") != settings:
        theirs = header.get("settings") if isinstance(header.get("settings"), dict) else {}
        diff = sorted(k for k in settings if theirs.get(k) != settings[k])
        raise DataError(f"{path}: an earlier run with other settings ({', '.join(diff) or 'unknown'}) left this "
                        "progress file; pass --restart to start over")
    done = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            image_id, records = _progress_entry(line, gt)
        except DataError as e:
            raise DataError(f"{path}: line {n} is damaged ({e}); pass --restart to start over") from None
        done[image_id] = records
    return done


def _progress_entry(line: str, gt: Annotations) -> tuple[int, list[dict]]:
    """(image id, checked records) of one progress line; DataError saying what is wrong."""
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        raise DataError(f"not JSON: {getattr(e, 'msg', e)}") from None
    if not isinstance(entry, dict) or set(entry) != {"image_id", "records"}:
        raise DataError("expected an object with image_id and records")
    image_id, records = entry["image_id"], entry["records"]
    if not is_int(image_id) or image_id not in gt.images:
        raise DataError(f"image_id {brief(image_id)} is not an image of {gt.source}")
    if not isinstance(records, list):
        raise DataError(f"records must be a list, got {brief(records)}")
    clean = [check_result(r, gt, f"record {i}") for i, r in enumerate(records)]
    if any(r["image_id"] != image_id for r in clean):
        raise DataError(f"a record of another image than {image_id}")
    return int(image_id), clean


def run_with_progress(todo: list[ImageJob], done: dict, log: LineLog, spec: ModelSpec,
                      options: RunOptions, bar, runner=None) -> list[tuple[str, str]]:
    """Run the jobs (with `runner`, a function of the signature of `run_jobs`, when given),
    appending each finished image to the progress file and to `done`; returns (path, problem)
    of the images that could not be read."""
    paths, missing = {job.image_id: job.path for job in todo}, []
    persons, start = 0, time.perf_counter()
    for image_id, records, problem in (runner or run_jobs)(todo, spec, options.flip, options.workers):
        if problem is None:
            done[image_id] = records
            log.append(json.dumps({"image_id": image_id, "records": records}, allow_nan=False))
            persons += len(records)
        else:
            missing.append((paths[image_id], problem))
        bar.set_postfix_str(f"{persons / (time.perf_counter() - start):.1f} persons/s", refresh=False)
        bar.update()
    return missing


# --- the whole run ---------------------------------------------------------------------------------

def evaluate_images(ann, images: "str | os.PathLike", results_out: "str | os.PathLike" = "result_keypoints.json",
                    *, boxes: "str | os.PathLike | None" = None, model: ModelSpec = ModelSpec(),
                    options: RunOptions = RunOptions(), progress: bool | None = None, runner=None) -> EvalRun:
    """Run top-down pose estimation over the annotated images and score the results.

    MMPose `TopDownCocoDataset` protocol: one pose per person box (the ground truth's when
    `boxes` is None, else the detections of a COCO detection-results file), flip test,
    rescoring, OKS-NMS per image at 0.9; then COCOeval over the images that were found.
    Each finished image is appended to `<results_out>.progress.jsonl`, so an interrupted
    run started again with the same settings skips them; the file is removed once every
    image is done (kept after a `limit` run, which a longer one then continues).
    `options.workers` > 1 spreads images over processes that each load the model once; a
    `runner` (`refpose.cluster.evaluate.RayJobRunner`) runs them elsewhere instead.
    Images that are missing or unreadable are listed in `EvalRun.missing` and left out of
    the figures (COCOeval's `imgIds` are the images that were run); images without a person
    box are only looked for, not decoded.
    """
    from tqdm import tqdm

    gt, images, results_out = load_annotations(ann), str(images), str(results_out)
    boxes = None if boxes is None else str(boxes)
    check_image_folder(images)
    options = options.check()
    jobs, box_source = make_jobs(gt, images, boxes, options.limit)
    inputs = InputFiles([ann, boxes, model.weights] + [os.path.join(images, img["file_name"])
                                                         for img in gt.images.values()])
    check_output_path(results_out, inputs)    # before the long run, not after it
    check_output_path(results_out + PROGRESS_SUFFIX, inputs)
    progress_path = results_out + PROGRESS_SUFFIX
    log, done = open_progress(progress_path, run_settings(gt, model, options.flip, boxes), gt, options.restart)
    with log:
        resumed = sum(job.image_id in done for job in jobs)
        todo = [job for job in jobs if job.image_id not in done]
        with tqdm(total=len(jobs), initial=resumed, desc="eval", unit="img",
                  disable=None if progress is None else not progress) as bar:
            missing = sorted(run_with_progress(todo, done, log, model, options, bar, runner))

        scored = [job.image_id for job in jobs if job.image_id in done]
        if not scored:
            raise DataError(f"{images}: none of the {len(jobs)} images of {gt.source} could be read "
                            f"(first: {missing[0][0]}: {missing[0][1]})")
        records = [r for image_id in scored for r in done[image_id]]
        write_atomic(results_out, json.dumps(records, allow_nan=False).encode())
        if not missing and len(jobs) == len(gt.images):
            with contextlib.suppress(FileNotFoundError):     # removed by hand meanwhile: nothing is lost
                os.unlink(progress_path)      # kept after a --limit run, so that a longer one continues it
    stats = coco_eval(gt, load_results(records, gt) if records else [], image_ids=scored)
    return EvalRun(stats, results_out, len(records), len(jobs), scored, resumed, missing, box_source)
