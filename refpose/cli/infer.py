"""`refpose infer`: top-down pose estimation on image files (DESIGN section 5).

For each image: person boxes (`--bbox`, `--boxes DETS.json`, `--detector`, or the whole image)
-> the image driver (`refpose.pose.driver.run_images`) -> `<name>.pose.json` (COCO keypoint
results) and `<name>.pose.png` (the skeleton drawn on the image) in `--out`
(`refpose.pose.files`); a video goes to `refpose.pose.video.run_video`. Files are written
atomically. A bad image is reported on one line and the others go on; the exit status is
0 when all went well, 1 when some failed, 2 when none could be processed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

from ..config import CONFIGS
from ..errors import BoxError, RefposeError
from .args import finite_float, probability
from .cluster import add_ray_options, check_infer_options, run_infer as run_infer_on_ray
from .infer_video import add_video_options, infer_video, load_detector

PROGRESS_MIN = 4          # a progress bar from this many images on (and only on a terminal)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer", help="top-down pose estimation on images: COCO keypoints JSON and a drawn skeleton",
        description="Top-down pose estimation. For each image (or each image in a directory) and each "
        "person box, 17 COCO keypoints: written to <name>.pose.json (COCO keypoint results) and drawn on "
        "<name>.pose.png in --out; a video gives <name>.pose.mp4 (skeletons drawn) and <name>.pose.jsonl "
        "(one line of records per frame). Boxes come from --bbox, from a COCO detection-results file, "
        "from an ONNX person detector (--detector), or default to the whole image or frame.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files (JPEG, PNG, BMP, WebP, TIFF, ...), videos (see below) or directories of them")
    p.add_argument("--weights", metavar="FILE", help="weights file (default: weights/<config>.safetensors "
                   "if present, else seeded untrained weights)")
    p.add_argument("--config", metavar="NAME", help=f"config: {', '.join(CONFIGS)} (default: the weights "
                   "file's, else wgnet)")
    p.add_argument("--bbox", metavar="X,Y,W,H", action="append", type=parse_bbox,
                   help="a person box in image pixels (repeatable; applies to every image)")
    p.add_argument("--boxes", metavar="DETS.json", help="COCO detection results; person boxes are matched "
                   "to images by file name or by image_id = the numeric file stem")
    p.add_argument("--box-thr", type=probability, default=0.3, metavar="T",
                   help="keep detections with score >= T (default 0.3)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the current one)")
    p.add_argument("--json", action="store_true", help="also print all records to stdout as one JSON list")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop's heatmaps")
    p.add_argument("--dark", action="store_true", help="DARK sub-pixel decoding instead of the quarter-pixel shift")
    p.add_argument("--kpt-thr", type=probability, default=0.3, metavar="T",
                   help="hide joints with score below T in the drawing (default 0.3)")
    p.add_argument("--heatmaps", action="store_true",
                   help="also save <name>.person<i>.heatmaps.png: the crop and its 17 heatmaps")
    add_video_options(p)
    add_ray_options(p, infer=True)
    p.set_defaults(run=run)


def parse_bbox(text: str) -> list[float]:
    """'X,Y,W,H' -> four finite floats (argparse type)."""
    try:
        values = [finite_float(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H (four finite numbers), got {text!r}")
    return values


def run(args) -> int:
    from ..pose.boxes import load_detections
    from ..pose.files import OutputNames, collect_inputs
    from ..pose.pipeline import PoseOptions
    from ..pose.video import is_video
    from ..pretrained import default_model

    if args.bbox and args.boxes:
        raise BoxError("give person boxes with --bbox or with --boxes, not both")
    check_infer_options(args)
    if args.ray is not None:
        return run_infer_on_ray(args)
    args.out = "." if args.out is None else args.out
    detector = load_detector(args.detector, args.box_thr, args.bbox, args.boxes, args.start, args.end)
    detections = load_detections(args.boxes, args.box_thr) if args.boxes else None
    options = PoseOptions(flip=args.flip, dark=args.dark, heatmaps=args.heatmaps)
    model = default_model(args.weights, args.config)
    out_dir = Path(args.out)         # created with the first output (write_files), not before
    if out_dir.exists() and not out_dir.is_dir():
        raise RefposeError(f"{args.out}: the output directory is a file")

    jobs, problems = collect_inputs(args.images)
    for message in problems:
        _err(f"refpose infer: error: {message}")
    tally = _Tally(len(jobs), len(problems))
    names = OutputNames(out_dir, jobs + [args.weights, args.boxes, args.detector])
    for video, group in itertools.groupby(jobs, key=is_video):
        if video:
            for path in group:
                try:
                    names.claim(path)
                    infer_video(path, model, out_dir, args, detector)
                except (RefposeError, OSError) as e:
                    tally.failed(e, path)
                else:
                    tally.done([])
        else:
            _infer_images(list(group), model, options, names, detections, detector, out_dir, args, tally)
    tally.close()
    if args.json:
        try:
            print(json.dumps(tally.records, allow_nan=False), flush=True)
        except BrokenPipeError:             # `refpose infer --json ... | head`: the reader has gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if tally.done_count == 0:
        return 2
    if model.trained is False:      # said once, after the results, so that an error stays one line
        source = model.source or f"seeded initialisation of config {model.config.name}"
        _err(f"refpose infer: warning: untrained weights ({source}): the keypoints are not meaningful "
             "until trained weights are given with --weights")
    return 1 if tally.failures else 0


def _infer_images(paths, model, options, names, detections, detector, out_dir: Path, args, tally) -> None:
    """Run images through the image driver and write each one's outputs."""
    from ..pose.boxes import boxes_for_image
    from ..pose.driver import ImageInput, run_images
    from ..pose.files import output_paths, write_outputs

    inputs = []
    for path in paths:
        try:
            names.claim(path)
        except RefposeError as e:
            tally.failed(e, path)
            continue
        boxes, scores, image_id = boxes_for_image(os.path.basename(path), args.bbox, detections)
        inputs.append(ImageInput(path=path, boxes=boxes, box_scores=scores, image_id=image_id,
                                 file_name=None if image_id is not None else os.path.basename(path)))
    no_box = f"no person box with score >= {args.box_thr} in {args.boxes}"
    for result in run_images(inputs, model, options, detector=detector, keep_images=True):
        path = result.input.path
        try:
            if result.error is not None:
                raise result.error
            if detections is not None and not result.poses:
                _err(f"refpose infer: note: {path}: {no_box}")
            write_outputs(path, result.image, result.poses, result.records, out_dir, args.kpt_thr,
                          model.config.input_size, names.inputs)
        except (RefposeError, OSError) as e:
            tally.failed(e, path)
            continue
        tally.done(result.records)
        if not args.json:
            n = len(result.poses)
            tqdm_write(f"{path}: {n} person{'s' if n != 1 else ''} -> {', '.join(map(str, output_paths(path, out_dir)))}",
                       sys.stdout)


class _Tally:
    """The run's progress bar (images, persons/s), its records and its failures."""

    def __init__(self, total: int, failures: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="image", file=sys.stderr, disable=True if total < PROGRESS_MIN else None)
        self.start, self.persons, self.done_count, self.failures, self.records = time.perf_counter(), 0, 0, failures, []

    def done(self, records: list) -> None:
        self.bar.update()
        self.done_count, self.persons = self.done_count + 1, self.persons + len(records)
        self.records += records
        self.bar.set_postfix_str(f"{self.persons / (time.perf_counter() - self.start):.1f} persons/s", refresh=False)

    def failed(self, e: Exception, path: str) -> None:
        self.bar.update()
        self.failures += 1
        _err(f"refpose infer: error: {_failure_line(e, path)}")

    def close(self) -> None:
        self.bar.close()


def _failure_line(e: Exception, path: str) -> str:
    """One line for an image or video that failed; an OSError is a failure to write its outputs."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError):
        text = f"{path}: cannot write the outputs: {e.strerror or text}"
    return text


def tqdm_write(line: str, file) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=file)


def _err(line: str) -> None:
    tqdm_write(line, sys.stderr)
