"""`refpose infer --ray`: images and videos through a pool of Ray actors into an output folder of shards.

The driver lists the inputs (files and folders as `refpose infer` takes them, or URIs of folders),
gives each image its person boxes as `refpose infer` does (`refpose.pose.boxes.boxes_for_image`),
skips what an earlier run of the same command finished (`refpose.cluster.shards`), and hands
the rest to Ray Data as items (`ray.data.from_items`). Each batch an actor returns becomes one
shard, written whole; a row that comes back twice (a batch retried after its actor was lost)
is written once.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RefposeError
from .session import CONNECT_TIMEOUT, Pool, plan_pool, ray_session


@dataclass(frozen=True)
class ClusterOptions:
    """Where to run and how wide: `address` (local, auto, HOST:PORT), `workers` (MIN, MAX) actors
    (None: as many as the cluster's CPUs hold), `threads` CPUs per actor."""

    address: str
    workers: tuple[int, int] | None = None
    threads: int = 1
    timeout: float = CONNECT_TIMEOUT


@dataclass(frozen=True)
class Boxes:
    """The person boxes of `refpose infer`: `bbox` (K, 4) for every image, detection results per
    image (`refpose.pose.boxes.load_detections`), or a detector (its path and box threshold)."""

    bbox: list | None = None
    detections: dict | None = None
    detector: tuple[str, float] | None = None


@dataclass
class InferSummary:
    out: str
    images: int = 0                  # images in the inputs
    resumed: int = 0                 # of those, done by an earlier run
    done: int = 0                    # done by this run
    persons: int = 0
    videos: int = 0
    failures: list = field(default_factory=list)     # one line per image or video that failed
    seconds: float = 0.0             # from the first batch handed to Ray to the last written
    start_seconds: float = 0.0       # starting or joining Ray
    pools: list = field(default_factory=list)
    nodes: set = field(default_factory=set)          # the nodes whose actors did work


def infer_on_ray(sources: list[str], out: "str | os.PathLike", model, options, cluster: ClusterOptions, *,
                 boxes: Boxes = Boxes(), draw: bool = False, kpt_thr: float = 0.3, video: dict | None = None,
                 settings: dict | None = None, progress: bool | None = None, on_failure=None) -> InferSummary:
    """Run `refpose infer` over `sources` on a Ray cluster, writing shards into `out` (see
    `refpose.cluster.shards`). `model` is the driver's model (its weights travel to the actors);
    `options` the PoseOptions; `video` the keyword arguments of `run_video` for videos;
    `settings` what else the records depend on (a rerun with others is refused);
    `on_failure(line)` is told each failure as it happens."""
    from .actors import ModelSource
    from .shards import OutputFolder

    summary = InferSummary(str(out))
    on_failure = on_failure or (lambda line: None)
    images, videos, failures = collect_items(sources, boxes, draw)
    for line in failures:
        on_failure(line)
    summary.failures += failures
    summary.images = len(images)
    folder = OutputFolder(out, {**(settings or {}), **_model_settings(model, options)}).open()
    todo = [item for item in images if item["key"] not in folder.done]
    summary.resumed = len(images) - len(todo)
    videos_todo = [v for v in videos if not all(p.exists() for p in _video_outputs(v, folder.path))]
    summary.resumed += len(videos) - len(videos_todo)
    summary.videos = len(videos)
    if todo or videos_todo:
        source = ModelSource.of(model)
        detector = None
        if boxes.detector is not None:
            with open(boxes.detector[0], "rb") as f:
                detector = (f.read(), boxes.detector[1])
        start = time.perf_counter()
        with ray_session(cluster.address, cluster.timeout) as ray:
            summary.start_seconds = time.perf_counter() - start
            run = _Run(ray, cluster, source, detector, folder, summary, on_failure,
                       _bar(len(images) + len(videos), summary.resumed, progress))
            try:
                if todo:
                    run.images(todo, options, draw, kpt_thr)
                if videos_todo:
                    run.videos(videos_todo, video or {})
            finally:
                run.bar.close()
                summary.seconds = time.perf_counter() - run.start
    folder.write_failures(summary.failures)
    return summary


def _model_settings(model, options) -> dict:
    import hashlib

    if model.source is None:
        weights = "untrained, seed 0"
    else:
        with open(model.source, "rb") as f:
            weights = hashlib.sha256(f.read()).hexdigest()
    return {"weights": weights, "config": model.config.name, "dtype": model.dtype.name,
            "flip": options.flip, "dark": options.dark}


# --- the inputs -------------------------------------------------------------------------------------

def collect_items(sources: list[str], boxes: Boxes, draw: bool) -> tuple[list[dict], list[dict], list[str]]:
    """(image items, video items, failures): each item a dict with `key` (the absolute path, or the
    URI), `file_name` (its path relative to its SRC folder; a file given by itself: its name) and,
    for images, `image_id`, `boxes`, `box_scores` as `refpose infer` takes them."""
    from ..pose.boxes import boxes_for_image
    from ..pose.files import OutputNames, collect_inputs
    from ..pose.video import is_video

    images, videos, failures = [], [], []
    by_name: dict[str, str] = {}
    names = OutputNames()                       # drawings and videos are files of their own in OUT
    for src in sources:
        if "://" in src:
            try:
                found, problems = list_uri(src), []
            except RefposeError as e:
                found, problems = [], [str(e)]
            root = src
        else:
            found, problems = collect_inputs([src])
            root = src if os.path.isdir(src) else None
        failures += problems
        for path in found:
            file_name = (os.path.basename(path) if root is None
                         else os.path.relpath(path, root) if "://" not in root else path[len(root):].lstrip("/"))
            key = path if "://" in path else os.path.abspath(path)
            try:
                if by_name.get(file_name, key) != key:
                    raise RefposeError(f"{path}: its records would carry the file_name {file_name} of "
                                       f"{by_name[file_name]} too; run the two folders separately")
                if file_name in by_name:
                    raise RefposeError(f"{path}: given more than once")
                if is_video(path) and boxes.detections is not None:     # as `refpose infer` says it
                    raise RefposeError(f"{path}: --boxes matches images by name; give a video's boxes with "
                                       "--detector or --bbox")
                if draw or is_video(path):
                    names.claim(path)
            except RefposeError as e:
                failures.append(str(e))
                continue
            by_name[file_name] = key
            if is_video(path):
                videos.append({"key": key, "file_name": file_name})
                continue
            bx, scores, image_id = boxes_for_image(os.path.basename(path), boxes.bbox, boxes.detections)
            images.append({"key": key, "file_name": file_name, "image_id": image_id,
                           "boxes": None if bx is None else bx.tolist(),
                           "box_scores": None if scores is None else scores.tolist()})
    return images, videos, failures


def list_uri(uri: str) -> list[str]:
    """The image and video files in a folder at a URI (s3://, gs://, ...), sorted, through pyarrow's
    file systems (those of Ray Data's readers)."""
    import pyarrow.fs

    from ..pose.imageio import IMAGE_SUFFIXES
    from ..pose.video import VIDEO_SUFFIXES

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=False))
    except (OSError, ValueError) as e:
        raise RefposeError(f"{uri}: cannot list: {str(e).splitlines()[0]}") from None
    prefix = uri[:uri.index("://") + 3]
    return sorted(prefix + info.path for info in infos if info.type == pyarrow.fs.FileType.File
                  and os.path.splitext(info.path)[1].lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)


def _video_outputs(item: dict, out: Path) -> tuple[Path, Path]:
    from ..pose.video import output_paths

    return tuple(output_paths(item["key"], out))


# --- running ------------------------------------------------------------------------------------------

def _map(ray, items: list[dict], actor, kwargs: dict, batch_size: int, pool: Pool):
    """The dataset of the actors' output batches. Ray Data restarts a lost actor and retries its
    batch by itself (its actor pools default to max_restarts=-1, max_task_retries=-1). An actor holds
    one batch at a time: the actors read their own inputs, so there is nothing to prefetch, and a
    batch waits for the first actor free rather than in the queue of a busy one."""
    ds = ray.data.from_items([{"item": json.dumps(item)} for item in items])
    return ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(
                              min_size=pool.min_size, max_size=pool.max_size, max_tasks_in_flight_per_actor=1),
                          num_cpus=pool.threads)


@dataclass
class _Run:
    """One run's pools: what every pool needs, and where its results go."""

    ray: object
    cluster: ClusterOptions
    source: object                   # the model's ModelSource
    detector: tuple | None           # (ONNX bytes, box threshold)
    folder: object                   # the OutputFolder
    summary: InferSummary
    on_failure: object
    bar: object
    start: float = field(default_factory=time.perf_counter)

    def images(self, todo: list[dict], options, draw: bool, kpt_thr: float) -> None:
        """The images through a pool of ImageActors, a shard per batch that comes back."""
        from ..pose.driver import IMAGES_PER_FORWARD
        from .actors import ImageActor

        batches = math.ceil(len(todo) / IMAGES_PER_FORWARD)
        pool = plan_pool(self.ray, self.cluster.workers, self.cluster.threads, batches)
        self.summary.pools.append(pool)
        kwargs = dict(model=self.source, options=options, threads=pool.threads, detector=self.detector, draw=draw,
                      kpt_thr=kpt_thr)
        seen, folder, summary = set(), self.folder, self.summary
        for batch in _map(self.ray, todo, ImageActor, kwargs, IMAGES_PER_FORWARD, pool).iter_batches(
                batch_size=None, batch_format="numpy"):
            images, records, failed, files = [], [], [], {}
            for text, png in zip(batch["result"], batch["png"]):
                row = json.loads(text)
                if row["key"] in seen or row["key"] in folder.done:     # a retried batch's twin
                    continue
                seen.add(row["key"])
                if row["error"] is not None:
                    failed.append({"key": row["key"], "file_name": row["file_name"], "error": row["error"]})
                    continue
                images.append({"key": row["key"], "file_name": row["file_name"], "persons": len(row["records"]),
                               "node": row["node"], "pid": row["pid"]})
                records += row["records"]
                if draw:
                    files[folder.path / (os.path.splitext(row["file_name"])[0] + ".pose.png")] = bytes(png)
            if not images and not failed:
                continue
            folder.write_shard(images, records, failed, files)
            for f in failed:
                self._failed(f["error"])
            summary.done += len(images)
            summary.persons += len(records)
            summary.nodes |= {i["node"] for i in images}
            self._advance(len(images) + len(failed))

    def videos(self, todo: list[dict], video: dict) -> None:
        """The videos through a pool of VideoActors, one video per task; its two outputs written together."""
        from .actors import VideoActor

        pool = plan_pool(self.ray, self.cluster.workers, self.cluster.threads, len(todo))
        self.summary.pools.append(pool)
        kwargs = dict(model=self.source, video=video, threads=pool.threads, detector=self.detector)
        seen = set()
        for batch in _map(self.ray, todo, VideoActor, kwargs, 1, pool).iter_batches(batch_size=None,
                                                                                     batch_format="numpy"):
            for text, mp4, jsonl in zip(batch["result"], batch["mp4"], batch["jsonl"]):
                row = json.loads(text)
                if row["key"] in seen:
                    continue
                seen.add(row["key"])
                if row["error"] is not None:
                    self._failed(row["error"])
                else:
                    mp4_path, jsonl_path = _video_outputs(row, self.folder.path)
                    self.folder.write({mp4_path: bytes(mp4), jsonl_path: bytes(jsonl)})
                    self.summary.persons += row["summary"]["persons"]
                    self.summary.nodes.add(row["node"])
                self._advance(1)

    def _failed(self, line: str) -> None:
        self.summary.failures.append(line)
        self.on_failure(line)

    def _advance(self, n: int) -> None:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.summary.done / seconds:.1f} images/s, "
                                 f"{self.summary.persons / seconds:.1f} persons/s", refresh=False)
        self.bar.update(n)


def _bar(total: int, initial: int, progress: bool | None):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="image", file=sys.stderr,
                disable=None if progress is None else not progress)
