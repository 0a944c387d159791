"""Pose estimation on a video: frames in through OpenCV, a drawn video and a JSON-lines file out.

For `clip.mp4` (any file OpenCV's video reader opens) `run_video` writes, in the output folder,

- `clip.pose.mp4`: every frame of the range, with skeletons drawn on the processed ones; the
  same width, height and frame rate as the input (codec MPEG-4 Part 2, fourcc `mp4v`, which
  every OpenCV build with FFmpeg can write). OpenCV's FFmpeg writer takes even widths and heights
  only, so an odd size loses its last column or row (`size_written` in the summary says so);
- `clip.pose.jsonl`: one line per frame of the range, `{"frame": i, "time": i / fps,
  "records": [...]}` with i the frame's index in the input and the records those of
  `refpose infer` (COCO keypoint results, `image_id` = i) plus `box_score` and, when smoothing,
  `track_id`. Frames left out by `every` get `"records": []`.

Both are written under temporary names beside the final ones and renamed when the last frame is
in, so a failed or interrupted run leaves nothing under the final names.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import RefposeError
from .driver import IMAGES_PER_FORWARD
from ..fileio import hold, path_problem, release, sweep_temporaries, temporary_path
from .imageio import MAX_PIXELS, check_pixels, quiet_stderr     # FFmpeg and OpenCV print on fd 2

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                  ".ts", ".3gp", ".ogv")
FOURCC = "mp4v"
DEFAULT_FPS = 30.0           # when the container does not give a frame rate
# what the output codec (mp4v, MPEG-4 Part 2) stores, as OpenCV's FFmpeg writer takes it: frame rates
# of 1/500 to 65535 per second (a 16-bit time resolution) and at most 8190 pixels a side (even sizes
# of a 13-bit width and height)
MIN_FPS, MAX_FPS = 0.002, 65535.0
MAX_SIDE = 8190


class VideoError(RefposeError):
    """A video that cannot be read (missing, not a video, no frames in range) or written."""


def is_video(path: "str | os.PathLike") -> bool:
    """Whether `refpose infer` treats this path as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def output_paths(path: "str | os.PathLike", out_dir: "str | os.PathLike") -> tuple[Path, Path]:
    """`<out_dir>/<stem>.pose.mp4` and `<out_dir>/<stem>.pose.jsonl` for the video at `path`."""
    stem = Path(path).stem
    return Path(out_dir) / f"{stem}.pose.mp4", Path(out_dir) / f"{stem}.pose.jsonl"


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int              # the container's frame count (0 when it does not say; may be approximate)
    size: tuple[int, int]    # (width, height) as the container declares it


def open_video(path: "str | os.PathLike", max_pixels: int = MAX_PIXELS) -> tuple[cv2.VideoCapture, VideoInfo]:
    """An opened cv2.VideoCapture and what the container says about the video; VideoError otherwise,
    among others for frames larger than `max_pixels` (the pixel limit of images), before any frame
    is decoded: a 3.5 MB file can hold a 15000x15000 JPEG frame, 675 MB decoded."""
    path = os.fspath(path)
    problem = path_problem(path, kind="a video")
    if problem:
        raise VideoError(f"{path}: {problem}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    with quiet_stderr():
        cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot read this file as a video")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    size = tuple(int(v) if math.isfinite(v) and v > 0 else 0
                 for v in (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    try:
        check_pixels(path, "the container", size, max_pixels, VideoError, "frame")
    except VideoError:
        cap.release()
        raise
    return cap, VideoInfo(fps, int(count) if math.isfinite(count) and count > 0 else 0, size)


def check_writable(path: str, info: VideoInfo, fourcc: str = FOURCC) -> None:
    """VideoError naming the cause when the output video cannot take the input's frame rate or
    size (checked before any frame is decoded; the writer itself only says it cannot open)."""
    if fourcc == FOURCC and not MIN_FPS <= info.fps <= MAX_FPS:
        raise VideoError(f"{path}: the container declares {info.fps:,.10g} frames per second; the output video "
                         f"(codec {fourcc}) takes {MIN_FPS:g} to {MAX_FPS:,.0f}")
    if fourcc == FOURCC and max(info.size) > MAX_SIDE + 1:
        raise VideoError(f"{path}: frames of {info.size[0]}x{info.size[1]} pixels; the output video (codec "
                         f"{fourcc}) takes at most {MAX_SIDE} pixels a side")


def frame_range(fps: float, start: float = 0.0, end: float | None = None) -> tuple[int, int | None]:
    """Indices [first, stop) of the frames whose time i / fps lies in [start, end); stop None = to the end."""
    first = max(0, math.ceil(start * fps - 1e-9))
    stop = None if end is None else max(first, math.ceil(end * fps - 1e-9))
    return first, stop


@contextlib.contextmanager
def staged(paths: list[Path]):
    """Temporary paths beside `paths` (refpose's temporary names, same suffix, so that writers pick
    the same format: `fileio.temporary_path`), created empty and held locked while in use; renamed
    onto `paths` when the block completes, deleted when it does not."""
    for folder in {p.parent for p in paths}:
        sweep_temporaries(folder)
    temps = [temporary_path(p, keep_suffix=True) for p in paths]
    held = []
    try:
        for tmp in temps:
            with open(tmp, "xb"):                  # created here, so that it is locked before anyone writes
                held.append(hold(tmp))
        yield temps
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for fd in held:
            release(fd)


def run_video(path: "str | os.PathLike", model, out_dir: "str | os.PathLike", *, boxes=None, detector=None,
              every: int = 1, start: float = 0.0, end: float | None = None, smooth: bool = False,
              flip: bool = False, dark: bool = False, kpt_thr: float = 0.3, progress: bool = True,
              fourcc: str = FOURCC) -> dict:
    """Estimate poses on the frames of a video and write `<stem>.pose.mp4` and `<stem>.pose.jsonl`.

    Person boxes per processed frame: `detector(rgb)` -> (boxes, scores) when given, else `boxes`
    (K, 4) COCO x, y, w, h for every frame, else the whole frame. Every `every`-th frame of the range
    [start, end) (seconds) is processed, the first one included; the others are copied. With `smooth`,
    keypoints are smoothed over time per tracked person (refpose.pose.smooth). Returns a summary:
    `frames` (written), `processed`, `persons` (summed over frames), `outputs` (the two paths).
    """
    from tqdm import tqdm

    from .draw import draw_poses
    from .driver import ImageInput, run_images
    from .pipeline import PoseOptions
    from .smooth import PoseSmoother

    path = os.fspath(path)
    if int(every) < 1:
        raise VideoError(f"--every must be at least 1, got {every}")
    if start < 0 or (end is not None and end <= start):
        raise VideoError(f"the range must have 0 <= start < end, got start {start}, end {end}")
    cap, info = open_video(path)
    try:
        check_writable(path, info, fourcc)
    except VideoError:
        cap.release()
        raise
    smoother = PoseSmoother() if smooth else None
    first, stop = frame_range(info.fps, start, end)
    known = [n for n in (stop, info.frames or None) if n is not None]
    total = min(known) - first if known else None              # for the progress bar only
    outputs = list(output_paths(path, out_dir))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    writer = None
    counts = {"frames": 0, "processed": 0, "persons": 0}
    options = PoseOptions(flip=flip, dark=dark)
    frame_boxes = None if boxes is None or len(boxes) == 0 else np.asarray(boxes, dtype=np.float64)
    refine = None if smoother is None else (lambda poses, inp: smoother(poses, inp.image_id))
    try:
        for _ in range(first):                                  # decode up to the range (seeking is not exact)
            if not cap.grab():
                break
        with staged(outputs) as (tmp_video, tmp_lines):
            with open(tmp_lines, "w", encoding="utf-8") as lines, \
                    tqdm(total=total if total and total > 0 else None, unit="frame", desc=Path(path).name,
                         file=sys.stderr, disable=None if progress else True, leave=False) as bar:
                for chunk in _frame_chunks(cap, first, stop, every):
                    if writer is None:
                        size = (chunk[0][1].shape[1], chunk[0][1].shape[0])     # (W, H) of the frames
                        check_pixels(path, "the decoder", size, MAX_PIXELS, VideoError, "frame")   # the container lied
                        check_writable(path, VideoInfo(info.fps, info.frames, size), fourcc)
                        even = (size[1] & ~1, size[0] & ~1)                     # (H, W) that the writer keeps
                        writer = _open_writer(tmp_video, outputs[0], fourcc, info.fps, even[1], even[0])
                    inputs = [ImageInput(image=np.ascontiguousarray(bgr[..., ::-1]), boxes=frame_boxes, image_id=index)
                              for index, bgr, estimate in chunk if estimate]
                    results = iter(run_images(inputs, model, options, detector=detector, keep_images=True,
                                              box_scores=True, refine=refine, per_forward=len(inputs) or 1))
                    for index, bgr, estimate in chunk:
                        records = []
                        if estimate:
                            r = next(results)
                            if r.error is not None:
                                raise r.error
                            records = r.records
                            bgr = np.ascontiguousarray(draw_poses(r.image, r.poses, kpt_thr)[..., ::-1])
                            counts["processed"] += 1
                            counts["persons"] += len(r.poses)
                        writer.write(np.ascontiguousarray(bgr[:even[0], :even[1]]))
                        lines.write(json.dumps({"frame": index, "time": round(index / info.fps, 6),
                                                "records": records}, allow_nan=False) + "\n")
                        counts["frames"] += 1
                        bar.update(1)
            if writer is None:
                until = "the end" if end is None else f"{end:g} s"
                where = f" between {start:g} s and {until}" if (start or end) else ""
                raise VideoError(f"{path}: no frames to read{where}")
            writer.release()
            writer = None
            if not os.path.exists(tmp_video) or os.path.getsize(tmp_video) == 0:
                raise VideoError(f"{outputs[0]}: OpenCV wrote no video (codec {fourcc})")
    except RefposeError as e:
        if not str(e).startswith(path):
            raise type(e)(f"{path}: {e}") from None
        raise
    finally:
        if writer is not None:
            writer.release()
        cap.release()
    return {**counts, "fps": info.fps, "size": size, "size_written": (even[1], even[0]),
            "outputs": [str(p) for p in outputs]}


def _frame_chunks(cap, first: int, stop: int | None, every: int, per_forward: int = IMAGES_PER_FORWARD):
    """The frames of the range as lists of (index, BGR frame, whether to estimate on it), each
    list holding up to `per_forward` frames to estimate on (their crops share forward passes)."""
    index, chunk, estimated = first, [], 0
    while stop is None or index < stop:
        ok, bgr = cap.read()
        if not ok or bgr is None:
            break
        estimate = (index - first) % every == 0
        chunk.append((index, bgr, estimate))
        estimated += estimate
        index += 1
        if estimated == per_forward:
            yield chunk
            chunk, estimated = [], 0
    if chunk:
        yield chunk


def _open_writer(tmp: Path, final: Path, fourcc: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    with quiet_stderr():
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise VideoError(f"{final}: OpenCV cannot write a {width}x{height} video at {fps:g} frames per second "
                         f"with codec {fourcc}")
    return writer
