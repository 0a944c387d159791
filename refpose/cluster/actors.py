"""The callable classes Ray Data runs in its actors: one model per actor, loaded once.

Each actor gets the bytes of the weights file (and of the detector) from the driver, so the
nodes of a cluster need not share a folder for them; the inputs themselves are read by the
actors (paths every node can read, or URIs). A batch comes in as a column `item` of JSON texts
and goes out as a column `result` of JSON texts (and bytes of drawings or videos): one row per
input, in order, so the driver knows what became of every image. An error of one input is its
row's `error`; an actor never raises for an input, so Ray retries a batch only when the actor's
process is lost.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError, RefposeError


@dataclass(frozen=True)
class ModelSource:
    """What an actor needs to load the model the driver loaded: the bytes of its weights file,
    the file's suffix, the config's name and the dtype."""

    weights: bytes
    suffix: str
    config: str
    dtype: str = "float32"

    @classmethod
    def of(cls, model) -> "ModelSource":
        """The source of a model from `refpose.pretrained.default_model`; seeded untrained weights
        (no file) travel as the file `refpose init` would write, so that every actor loads a file."""
        from ..weights import init_weights, save_weights

        path = model.source
        if path is None:
            with tempfile.TemporaryDirectory(prefix="refpose-") as tmp:
                path = os.path.join(tmp, "seeded.safetensors")
                save_weights(path, init_weights(model.config, seed=0), model.config, trained=False)
                with open(path, "rb") as f:
                    return cls(f.read(), ".safetensors", model.config.name, model.dtype.name)
        with open(path, "rb") as f:
            return cls(f.read(), os.path.splitext(path)[1], model.config.name, model.dtype.name)

    @contextlib.contextmanager
    def file(self):
        """The weights in a temporary file (removed after the block), for loaders that take a path."""
        with as_file(self.weights, self.suffix) as path:
            yield path


@contextlib.contextmanager
def as_file(data: bytes, suffix: str):
    """`data` in a temporary file, removed after the block."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="refpose-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def load_model(source: ModelSource):
    from ..weights import load

    with source.file() as path:
        return load(path, source.config, source.dtype)


def load_detector(detector: tuple[bytes, float] | None):
    """A PersonDetector from (its ONNX bytes, box threshold), or None."""
    if detector is None:
        return None
    from ..pose.detector import PersonDetector

    with as_file(detector[0], ".onnx") as path:
        return PersonDetector(path, detector[1])


class _Actor:
    """What every actor does first: take its share of threads, note where it runs."""

    def __init__(self, threads: int):
        import ray

        from ..threads import set_kernel_threads, single_threaded_blas

        self.threads = threads
        set_kernel_threads(threads)
        single_threaded_blas().__enter__()           # for the actor's life, as evaluation workers do
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def _row(self, **fields) -> str:
        return json.dumps({**fields, "node": self.node, "pid": self.pid}, allow_nan=False)


class ImageActor(_Actor):
    """Poses of a batch of images through the image driver, as `refpose infer` runs them."""

    def __init__(self, model: ModelSource, options, threads: int = 1, detector=None, draw: bool = False,
                 kpt_thr: float = 0.3):
        super().__init__(threads)
        self.model = load_model(model)
        self.options = options
        self.detector = load_detector(detector)
        self.draw, self.kpt_thr = draw, kpt_thr

    def __call__(self, batch: dict) -> dict:
        from ..pose.driver import run_images
        from ..threads import set_kernel_threads

        set_kernel_threads(self.threads)             # Ray may call from another thread than __init__'s
        items = [json.loads(text) for text in batch["item"]]
        rows, pngs = [None] * len(items), [b""] * len(items)
        inputs, where = [], []
        for i, item in enumerate(items):
            try:
                inputs.append(_image_input(item))
                where.append(i)
            except RefposeError as e:                # a URI that cannot be read
                rows[i] = self._row(key=item["key"], file_name=item["file_name"], records=[], error=_line(e))
        results = run_images(inputs, self.model, self.options, detector=self.detector, keep_images=self.draw)
        for i, result in zip(where, results):
            item = items[i]
            error = _line(result.error) if result.error is not None else None
            rows[i] = self._row(key=item["key"], file_name=item["file_name"], records=result.records, error=error)
            if self.draw and error is None:
                from ..pose.draw import draw_poses, encode_png

                pngs[i] = encode_png(draw_poses(result.image, result.poses, self.kpt_thr))
        return {"result": np.array(rows, dtype=object), "png": np.array(pngs, dtype=object)}


def _image_input(item: dict):
    from ..pose.driver import ImageInput

    boxes = None if item["boxes"] is None else np.array(item["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = None if item["box_scores"] is None else np.array(item["box_scores"], dtype=np.float64)
    common = dict(boxes=boxes, box_scores=scores, image_id=item["image_id"], file_name=item["file_name"])
    if "://" in item["key"]:
        return ImageInput(image=read_uri_image(item["key"]), **common)
    return ImageInput(path=item["key"], **common)


def read_uri_image(uri: str) -> np.ndarray:
    """An image at a URI (s3://, gs://, ... as pyarrow's file systems, which Ray Data's readers
    use, open it), decoded by refpose's own reader."""
    from ..pose.imageio import MAX_PIXELS, BYTES_PER_PIXEL_MAX, decode_image

    try:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            data = f.read(BYTES_PER_PIXEL_MAX * MAX_PIXELS + 2 ** 20)
    except (OSError, ValueError) as e:
        raise ImageError(f"{uri}: cannot read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return decode_image(data, uri)


def _line(e: Exception) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


class VideoActor(_Actor):
    """One video per call, its frames in order on this actor (so smoothing sees them all), as
    `refpose infer` runs a video; the two outputs come back as bytes."""

    def __init__(self, model: ModelSource, video: dict, threads: int = 1, detector=None):
        super().__init__(threads)
        self.model = load_model(model)
        self.video = video                           # the keyword arguments of run_video
        self.detector = load_detector(detector)

    def __call__(self, batch: dict) -> dict:
        from ..pose.video import run_video
        from ..threads import set_kernel_threads

        set_kernel_threads(self.threads)
        rows, mp4s, lines = [], [], []
        for text in batch["item"]:
            item = json.loads(text)
            mp4 = jsonl = b""
            try:
                with tempfile.TemporaryDirectory(prefix="refpose-video-") as tmp:
                    s = run_video(item["key"], self.model, tmp, detector=self.detector, progress=False, **self.video)
                    with open(s["outputs"][0], "rb") as f:
                        mp4 = f.read()
                    with open(s["outputs"][1], "rb") as f:
                        jsonl = f.read()
                summary = {k: s[k] for k in ("frames", "processed", "persons")}
                rows.append(self._row(key=item["key"], file_name=item["file_name"], summary=summary, error=None))
            except (RefposeError, OSError) as e:
                rows.append(self._row(key=item["key"], file_name=item["file_name"], summary=None, error=_line(e)))
            mp4s.append(mp4)
            lines.append(jsonl)
        return {"result": np.array(rows, dtype=object), "mp4": np.array(mp4s, dtype=object),
                "jsonl": np.array(lines, dtype=object)}


class EvalActor(_Actor):
    """`refpose eval --images` jobs: the evaluation's Predictor (boxes, flip test, OKS-NMS)."""

    def __init__(self, model: ModelSource, flip: bool = True, threads: int = 1):
        from ..data.evaluate import ModelSpec, Predictor

        super().__init__(threads)
        with model.file() as path:
            self.predictor = Predictor(ModelSpec(path, model.config, model.dtype), flip)

    def __call__(self, batch: dict) -> dict:
        from ..data.evaluate import ImageJob
        from ..threads import set_kernel_threads

        set_kernel_threads(self.threads)
        jobs = []
        for text in batch["item"]:
            item = json.loads(text)
            boxes = np.array(item["boxes"], dtype=np.float64).reshape(-1, 4)
            jobs.append(ImageJob(item["image_id"], item["path"], boxes, np.array(item["box_scores"], dtype=np.float64)))
        try:
            rows = [self._row(image_id=i, records=records, problem=problem, fatal=None)
                    for i, records, problem in self.predictor.run(jobs)]
        except RefposeError as e:                    # a box the pipeline refuses: the run stops, as locally
            rows = [self._row(image_id=None, records=None, problem=None, fatal=_line(e))]
        return {"result": np.array(rows, dtype=object)}
