"""`refpose eval`: COCO keypoint AP/AR (or, with --metric pckh, MPII PCKh) of a results file,
or of a run over the annotated images.

Exit status: 0; 2 for bad input (one line on stderr). A run with images missing or
unreadable prints the figures of the images that were there, one line per missing image
and a count, and exits 2: the figures are not those of the whole set.
"""
from __future__ import annotations

import json
import os
import sys

from .args import positive_int, worker_range
from .cluster import add_ray_options, eval_runner

NOTE = ("COCO keypoint AP/AR from pycocotools' COCOeval (standard COCO OKS sigmas); "
        "AP, AP50, AP75, APm, APl are the columns of the paper's Table 2")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="COCO keypoint AP/AR (pycocotools), or MPII PCKh, of a results file or of a run over images",
        description=NOTE + ". Either score a results file (--results), or run the model over the "
        "annotated images (--images) on ground-truth person boxes or detections (--boxes), with "
        "flip test, rescoring and OKS-NMS as MMPose does, write the results and score them. "
        "A run can be interrupted and resumed by running the same command again. With --metric pckh: "
        "MPII PCKh (the paper's Table 3) of a predictions file or of a run over mpii_val.json's persons, "
        "against the official .mat (--gt).")
    p.add_argument("--metric", choices=("coco", "pckh"), default="coco",
                   help="coco: keypoint AP/AR (default); pckh: MPII PCKh@0.5 per joint group, Mean and "
                   "Mean@0.1 in percent, as the MPII benchmark and MMPose compute them (needs --gt and scipy)")
    p.add_argument("--ann", required=True, metavar="GT.json", help="COCO person-keypoints annotations; with "
                   "--metric pckh, MMPose's mpii_val.json (one entry per person: image, center, scale, ...)")
    p.add_argument("--gt", metavar="GT.mat", help="with --metric pckh: the official MPII validation .mat "
                   "(mpii_gt_val.mat: dataset_joints, jnt_missing, pos_gt_src, headboxes_src)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", metavar="RES.json", help="COCO keypoint results to score "
                     "(records keyed by image_id, or by file_name as `refpose infer` writes them); with "
                     "--metric pckh, one record per entry of --ann, in its order, each with keypoints = "
                     "16 x [x, y, score] in 0-based image pixels")
    src.add_argument("--images", metavar="DIR", help="run the model over the annotated images in DIR")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the keys AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl "
                   "(with --metric pckh: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Mean, Mean@0.1)")
    run = p.add_argument_group("with --images")
    run.add_argument("--boxes", metavar="DETS.json",
                     help="COCO person detection results (default: the ground-truth person boxes)")
    run.add_argument("--weights", metavar="FILE", help="weights file (default: as `refpose infer`)")
    run.add_argument("--config", help="the config to run (default: the one a weights file names, else wgnet)")
    run.add_argument("--no-flip", dest="flip", action="store_false", help="turn the flip test off")
    run.add_argument("--results-out", metavar="RES.json",
                     help="where to write the results (default result_keypoints.json); progress is "
                     "kept in RES.json.progress.jsonl until every image is done")
    run.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images of GT.json")
    run.add_argument("--workers", type=worker_range, metavar="N",
                     help="processes to spread the images over (default 1); with --ray, actors (N or MIN-MAX; "
                     "default: as many as the cluster's CPUs hold)")
    run.add_argument("--restart", action="store_true",
                     help="ignore the progress of an earlier interrupted run and start over")
    add_ray_options(p, infer=False)
    p.set_defaults(run=run_eval, parser=p)


def run_pckh(args) -> int:
    """--metric pckh: score a predictions file, or run the model over the entries and score."""
    from ..data import mpii as pckh

    if args.gt is None:
        args.parser.error("--metric pckh needs --gt GT.mat (the official MPII validation ground truth)")
    not_here = [f"--{k.replace('_', '-')}" for k in ("boxes", "limit", "workers", "restart", "ray", "threads")
                if getattr(args, k) is not None and getattr(args, k) is not False]
    if not_here:
        args.parser.error(f"{', '.join(not_here)} do not go with --metric pckh")
    if args.results:
        used = [f"--{k.replace('_', '-')}" for k in ("weights", "config", "results_out") if getattr(args, k)]
        used += ["--no-flip"] if not args.flip else []
        if used:
            args.parser.error(f"{', '.join(used)} only go with --images (a run), not with --results")
        stats = pckh.score_pckh(args.ann, args.gt, args.results)
        title = f"{args.results} against {args.gt}"
    else:
        out = args.results_out or "pred_mpii.json"
        stats = pckh.evaluate_pckh(args.ann, args.gt, args.images, results_out=out, weights=args.weights,
                                     config=args.config, flip=args.flip)
        title = f"wrote {out}; flip test {'on' if args.flip else 'off'}"
    if args.json:
        print(json.dumps(stats, allow_nan=False))
    else:
        print(f"{title}. MPII PCKh@0.5 (%), Mean over 14 joints weighted by visible counts:")
        print(pckh.format_pckh(stats))
    return 0


def run_eval(args) -> int:
    from ..data.evaluate import PROGRESS_SUFFIX, ModelSpec, RunOptions, evaluate_images
    from ..data.coco import format_stats, score_results

    if args.metric == "pckh":
        return run_pckh(args)
    if args.gt is not None:
        args.parser.error("--gt goes with --metric pckh")
    if args.results:
        used = [f"--{k.replace('_', '-')}" for k in ("boxes", "weights", "config", "results_out", "limit",
                                                     "workers", "restart", "ray", "threads")
                if getattr(args, k) is not None and getattr(args, k) is not False]
        used += ["--no-flip"] if not args.flip else []
        if used:
            args.parser.error(f"{', '.join(used)} only go with --images (a run), not with --results")
        stats = score_results(args.ann, args.results)
        if args.json:
            print(json.dumps(stats, allow_nan=False))
        else:
            print(f"{args.results} against {args.ann}:")
            print(format_stats(stats))
        return 0

    args.results_out = args.results_out or "result_keypoints.json"
    if args.ray is None and args.workers is not None and args.workers[0] != args.workers[1]:
        args.parser.error("--workers MIN-MAX goes with --ray; a process pool takes a number")
    try:
        with eval_runner(args) as runner:
            run = evaluate_images(args.ann, args.images, args.results_out, boxes=args.boxes,
                                  model=ModelSpec(args.weights, args.config),
                                  options=RunOptions(flip=args.flip, limit=args.limit, restart=args.restart,
                                                     workers=1 if args.workers is None or runner else args.workers[1]),
                                  runner=runner)
    except KeyboardInterrupt:
        progress = args.results_out + PROGRESS_SUFFIX
        if os.path.exists(progress):
            print(f"refpose eval: the finished images are kept in {progress}; "
                  "run the same command again to continue", file=sys.stderr)
        raise
    # in --json mode stdout holds the object alone: everything else goes to stderr
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    for path, problem in run.missing:
        print(f"refpose eval: {path}: {problem}", file=sys.stderr)
    say(f"boxes: {run.boxes}; flip test {'on' if args.flip else 'off'}")
    say(f"images: {len(run.scored)} of {run.images} scored"
        + (f" ({run.resumed} from the progress of an earlier run)" if run.resumed else "")
        + (f", {len(run.missing)} missing or unreadable (not scored)" if run.missing else ""))
    say(f"wrote {run.results_path} ({run.records} poses)")
    if args.json:
        print(json.dumps(run.stats, allow_nan=False))
    else:
        print(format_stats(run.stats))
    if run.missing:
        # the figures above cover the images that were there; the run itself is incomplete
        print(f"refpose eval: error: {len(run.missing)} of {run.images} images missing or unreadable; "
              f"the finished ones are kept in {run.results_path}{PROGRESS_SUFFIX}: "
              "restore the images and run again to complete", file=sys.stderr)
        return 2
    return 0
