"""`refpose infer`'s person detector and video inputs: their options, and one video's run.

`refpose infer` registers these options and hands each video to `infer_video`; the work is done
by `refpose.pose.detector.PersonDetector` and `refpose.pose.video.run_video`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BoxError, RefposeError
from .args import positive_int, seconds


def add_video_options(p) -> None:
    """--detector (person boxes from an ONNX detector) and the options of video inputs."""
    from ..pose.detector import YOLOX_NMS_IOU, default_runtime
    from ..pose.smooth import BETA, MIN_CUTOFF
    from ..pose.video import FOURCC, VIDEO_SUFFIXES

    runtime = ("ONNX Runtime (installed)" if default_runtime() == "onnxruntime"
               else "OpenCV cv2.dnn (ONNX Runtime, the 'onnx' extra, is not installed)")
    g = p.add_argument_group(
        "person detector and videos",
        f"A video ({' '.join(VIDEO_SUFFIXES)}) gives <name>.pose.mp4 (same size, frame rate and frame count, "
        f"skeletons drawn, codec {FOURCC}) and <name>.pose.jsonl (one line per frame: frame, time in seconds, "
        "records). Its boxes come from --detector, --bbox, or the whole frame. --json lists the records of "
        "images only.")
    g.add_argument("--detector", metavar="MODEL.onnx",
                   help="person boxes from an ONNX detector: a YOLOX export (raw grid output, NMS at IoU "
                   f"{YOLOX_NMS_IOU}) or an MMDeploy end2end export (dets, labels); class 0, score >= --box-thr. "
                   f"Runs on {runtime}")
    g.add_argument("--every", type=positive_int, default=1, metavar="N",
                   help="video: estimate on every Nth frame; the others are copied and get an empty record line "
                   "(default 1)")
    g.add_argument("--start", type=seconds, default=0.0, metavar="SEC", help="video: begin at this time (default 0)")
    g.add_argument("--end", type=seconds, metavar="SEC", help="video: stop before this time (default: the end)")
    g.add_argument("--smooth", action="store_true",
                   help="video: One-Euro filter on each tracked person's keypoints (tracks by box IoU; MMPose's "
                   f"parameters min_cutoff {MIN_CUTOFF}, beta {BETA}, time in frames)")


def load_detector(detector: str | None, box_thr: float, bbox, boxes, start: float, end: float | None):
    """The PersonDetector of --detector (None without one), after checking the options that go with it."""
    if detector and (bbox or boxes):
        raise BoxError(f"give person boxes with {'--bbox' if bbox else '--boxes'} or with --detector, not both")
    if end is not None and end <= start:
        raise RefposeError(f"--end ({end:g} s) must come after --start ({start:g} s)")
    if not detector:
        return None
    from ..pose.detector import PersonDetector

    return PersonDetector(detector, box_thr)


def infer_video(path: str, model, out_dir: Path, args, detector) -> None:
    """Run one video (refpose.pose.video.run_video) and say what was written."""
    from ..pose.video import run_video

    if args.boxes:
        raise RefposeError(f"{path}: --boxes matches images by name; give a video's boxes with --detector or --bbox")
    if args.heatmaps:
        _note(f"refpose infer: note: {path}: --heatmaps applies to images; no heatmaps are saved for a video")
    s = run_video(path, model, out_dir, boxes=args.bbox, detector=detector, every=args.every, start=args.start,
                  end=args.end, smooth=args.smooth, flip=args.flip, dark=args.dark, kpt_thr=args.kpt_thr)
    if s["size_written"] != s["size"]:
        _note("refpose infer: note: {}: OpenCV writes even sizes only: {}x{} -> {}x{} in {}".format(
            path, *s["size"], *s["size_written"], s["outputs"][0]))
    if not args.json:
        print(f"{path}: {s['frames']} frames, {s['processed']} estimated, {s['persons']} poses -> "
              f"{', '.join(s['outputs'])}", flush=True)


def _note(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
