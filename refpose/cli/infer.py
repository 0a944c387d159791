"""`refpose infer`: top-down pose estimation on image files (DESIGN section 5).

For each image: person boxes (`--bbox`, `--boxes DETS.json`, or the whole image) ->
`refpose.pose.pipeline.predict` -> `<name>.pose.json` (COCO keypoint results) and
`<name>.pose.png` (the skeleton drawn on the image) in `--out`. Files are written
atomically. A bad image is reported on one line and the others go on; the exit status is
0 when all went well, 1 when some failed, 2 when none could be processed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config import CONFIGS
from ..errors import BoxError, RefposeError
from ..fileio import write_files
from ..pose.video import is_video
from . import finite_float
from .infer_video import add_video_options, infer_video, load_detector

PROGRESS_MIN = 4          # a progress bar from this many images on (and only on a terminal)
OUTPUT_SUFFIXES = (".pose.png", ".heatmaps.png", ".pose.mp4")   # our own outputs, skipped when scanning a directory


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
    p.add_argument("--box-thr", type=finite_float, default=0.3, metavar="T",
                   help="keep detections with score >= T (default 0.3)")
    p.add_argument("--out", metavar="DIR", default=".", help="output directory (default: the current one)")
    p.add_argument("--json", action="store_true", help="also print all records to stdout as one JSON list")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop's heatmaps")
    p.add_argument("--dark", action="store_true", help="DARK sub-pixel decoding instead of the quarter-pixel shift")
    p.add_argument("--kpt-thr", type=finite_float, default=0.3, metavar="T",
                   help="hide joints with score below T in the drawing (default 0.3)")
    p.add_argument("--heatmaps", action="store_true",
                   help="also save <name>.person<i>.heatmaps.png: the crop and its 17 heatmaps")
    add_video_options(p)
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
    from tqdm import tqdm

    from ..pose.boxes import boxes_for_image, load_detections
    from ..pose.pipeline import IMAGES_PER_FORWARD, PoseOptions
    from ..pretrained import default_model

    if args.bbox and args.boxes:
        raise BoxError("give person boxes with --bbox or with --boxes, not both")
    detector = load_detector(args.detector, args.box_thr, args.bbox, args.boxes, args.start, args.end)
    detections = load_detections(args.boxes, args.box_thr) if args.boxes else None
    no_box = f"no person box with score >= {args.box_thr} in {args.boxes}"
    options = PoseOptions(flip=args.flip, dark=args.dark, heatmaps=args.heatmaps)
    model = default_model(args.weights, args.config)
    out_dir = Path(args.out)         # created with the first output (write_files), not before
    if out_dir.exists() and not out_dir.is_dir():
        raise RefposeError(f"{args.out}: the output directory is a file")

    jobs, failed = collect_images(args.images)
    for message in failed:
        _err(f"refpose infer: error: {message}")
    done, persons, records_all = 0, 0, []
    taken: dict[str, str] = {}               # output name -> the input that claimed it
    bar = tqdm(total=len(jobs), unit="image", file=sys.stderr, disable=True if len(jobs) < PROGRESS_MIN else None)
    start = time.perf_counter()
    for chunk in (jobs[i:i + IMAGES_PER_FORWARD] for i in range(0, len(jobs), IMAGES_PER_FORWARD)):
        videos = [p for p in chunk if is_video(p)]
        images = [p for p in chunk if not is_video(p)]
        for path in videos:
            bar.update()
            try:
                _claim(taken, Path(path).stem, path)
                infer_video(path, model, out_dir, args, detector)
            except (RefposeError, OSError) as e:
                failed.append(str(e))
                tqdm.write(f"refpose infer: error: {_one_line(e, path)}", file=sys.stderr)
                continue
            done += 1
        for path, result in run_images(images, model, options, taken, lambda name: boxes_for_image(
                name, args.bbox, detections), detector):
            bar.update()
            try:
                if isinstance(result, Exception):
                    raise result
                poses, records, image = result
                if detections is not None and not poses:
                    _err(f"refpose infer: note: {path}: {no_box}")
                write_outputs(path, image, poses, records, out_dir, args.kpt_thr, model.config.input_size)
            except (RefposeError, OSError) as e:
                failed.append(str(e))
                tqdm.write(f"refpose infer: error: {_one_line(e, path)}", file=sys.stderr)
                continue
            done, persons, records_all = done + 1, persons + len(poses), records_all + records
            bar.set_postfix_str(f"{persons / (time.perf_counter() - start):.1f} persons/s", refresh=False)
            if not args.json:
                name = Path(path).stem
                tqdm.write(f"{path}: {len(poses)} person{'s' if len(poses) != 1 else ''} -> "
                           f"{out_dir / (name + '.pose.json')}, {out_dir / (name + '.pose.png')}", file=sys.stdout)
    bar.close()
    if args.json:
        try:
            print(json.dumps(records_all, allow_nan=False), flush=True)
        except BrokenPipeError:             # `refpose infer --json ... | head`: the reader has gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if done == 0:
        return 2
    if model.trained is False:      # said once, after the results, so that an error stays one line
        source = model.source or f"seeded initialisation of config {model.config.name}"
        _err(f"refpose infer: warning: untrained weights ({source}): the keypoints are not meaningful "
             "until trained weights are given with --weights")
    return 1 if failed else 0


def _claim(taken: dict, name: str, path: str) -> None:
    """Refuse an input whose outputs would overwrite those of an earlier one."""
    if name in taken:
        if os.path.realpath(taken[name]) == os.path.realpath(path):
            raise RefposeError(f"{path}: given more than once (its outputs are written already)")
        raise RefposeError(f"{path}: its outputs {name}.pose.* would overwrite those of {taken[name]}")
    taken[name] = path


def run_images(paths: list[str], model, options, taken: dict, boxes_of, detector=None) -> list:
    """Read the images and run their persons through the network together
    (`refpose.pose.pipeline.predict_images`); per path, (poses, records, image) or the error.
    A `detector` (refpose.pose.detector.PersonDetector) gives each image's boxes instead of `boxes_of`,
    and its records carry the detector's `box_score`."""
    from ..pose.detector import add_box_scores
    from ..pose.imageio import read_image
    from ..pose.pipeline import predict_images

    results, items, where = {}, [], []
    for path in paths:
        try:
            _claim(taken, Path(path).stem, path)
            image = read_image(path)
            boxes, scores, image_id = boxes_of(os.path.basename(path))
            if detector is not None:
                boxes, scores = detector(image)
        except RefposeError as e:
            results[path] = e
            continue
        items.append((image, boxes, scores, image_id, None if image_id is not None else os.path.basename(path)))
        where.append(path)
    for path, item, out in zip(where, items, predict_images(items, model, options, keep_going=True)):
        if isinstance(out, RefposeError):
            results[path] = type(out)(f"{path}: {out}")
            continue
        if detector is not None:
            add_box_scores(out[1], item[2])
        results[path] = (*out, item[0])
    return [(path, results[path]) for path in paths]


def write_outputs(path: str, image, poses: list, records: list, out_dir: Path, kpt_thr: float,
                  input_size: tuple[int, int]) -> None:
    """`<name>.pose.json`, `<name>.pose.png` and, for poses with heatmaps, the heatmap montages."""
    from ..pose.draw import draw_poses, encode_png, heatmap_montage

    stem = Path(path).stem
    files = {out_dir / f"{stem}.pose.json": (json.dumps(records, indent=1, allow_nan=False) + "\n").encode(),
             out_dir / f"{stem}.pose.png": encode_png(draw_poses(image, poses, kpt_thr))}
    for i, pose in enumerate(poses):
        if "heatmaps" in pose:
            files[out_dir / f"{stem}.person{i}.heatmaps.png"] = encode_png(heatmap_montage(image, pose, input_size))
    write_files(files)


def collect_images(paths: list[str]) -> tuple[list[str], list[str]]:
    """Image paths to run (a directory gives its image files, sorted) and problems found on the way.

    Every entry of a directory with an image or video name is run, except folders: a broken
    link, a link loop or an unreadable file is reported with its reason when it is read
    (`refpose.pose.imageio.path_problem`), never skipped in silence."""
    from ..pose.imageio import IMAGE_SUFFIXES, path_problem
    from ..pose.video import VIDEO_SUFFIXES

    jobs, problems = [], []
    for p in paths:
        if not os.path.isdir(p):
            jobs.append(p)                 # a missing file is reported when it is read
            continue
        problem = path_problem(p, folder=True)
        try:
            with os.scandir(p) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problem = problem or (e.strerror or str(e))
        if problem:
            problems.append(f"{p}: cannot list this directory: {problem}")
            continue
        found = [e.path for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
                 and not e.name.endswith(OUTPUT_SUFFIXES) and not _is_dir(e)]
        if not found:
            problems.append(f"{p}: no image files in this directory")
        jobs += found
    return jobs, problems


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:                        # a link loop: not a folder; reading it says why
        return False


def _one_line(e: Exception, path: str) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError):
        text = f"{path}: cannot write the outputs: {e.strerror or text}"
    return text


def _err(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
