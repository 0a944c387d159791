"""The `--ray` options of `refpose infer` and `refpose eval --images`, and the two runs they start.

`--ray ADDRESS` runs the images on a Ray cluster (`refpose.cluster`): `local` starts a private
instance in the process, `auto` joins the cluster `ray start` made on this machine (or RAY_ADDRESS),
HOST:PORT or ray://HOST:PORT joins that one. Ray is imported only when the option is given.
"""
from __future__ import annotations

import hashlib
import sys

from ..errors import RefposeError
from .args import positive_int, ray_address, worker_range

HELP = ("run on a Ray cluster (pip install 'refpose[ray]'): local (a private instance), auto (the cluster "
        "`ray start` made here, or RAY_ADDRESS), or HOST:PORT / ray://HOST:PORT")


def add_ray_options(p, *, infer: bool) -> None:
    from ..cluster.session import CONNECT_TIMEOUT

    g = p.add_argument_group(
        "Ray cluster", "With --ray, an actor per worker loads the model once and runs the images of its batches; "
        f"an address that does not answer within {CONNECT_TIMEOUT:g} s is an error. "
        + ("The output folder (--out, required) gets JSON Lines shards part-N.jsonl (one COCO keypoint "
           "record per line, file_name relative to its SRC folder), their part-N.done.json lists and "
           "failed.txt; the same command again skips the images done." if infer else ""))
    g.add_argument("--ray", type=ray_address, metavar="ADDRESS", help=HELP)
    if infer:
        g.add_argument("--workers", type=worker_range, metavar="N|MIN-MAX",
                       help="with --ray: actors in the pool, or a range for a pool that grows (default: as many as "
                       "the cluster's CPUs hold)")
    g.add_argument("--threads", type=positive_int, metavar="T",
                   help="with --ray: CPUs (kernel threads) per actor (default 1)")
    if infer:
        g.add_argument("--draw", action="store_true", help="with --ray: also write <name>.pose.png for each image")


def file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_infer_options(args) -> None:
    """One line for options that do not go with --ray, or --ray options without it."""
    if args.ray is None:
        used = [f"--{k}" for k in ("workers", "threads", "draw") if getattr(args, k) not in (None, False)]
        if used:
            raise RefposeError(f"{', '.join(used)} go{'es' if len(used) == 1 else ''} with --ray")
        return
    used = [f"--{k}" for k in ("json", "heatmaps") if getattr(args, k)]
    if used:
        raise RefposeError(f"{', '.join(used)} do{'es' if len(used) == 1 else ''} not go with --ray "
                           "(the records are in the shards of --out)")
    if args.out is None:
        raise RefposeError("--ray needs --out DIR: the folder of the shards")


def run_infer(args) -> int:
    """`refpose infer --ray`: the run, its failures as they come, a summary line."""
    from ..cluster.infer import Boxes, ClusterOptions, infer_on_ray
    from ..pose.boxes import load_detections
    from ..pose.pipeline import PoseOptions
    from ..pretrained import default_model
    from .infer_video import load_detector

    load_detector(args.detector, args.box_thr, args.bbox, args.boxes, args.start, args.end)   # checks it
    detections = load_detections(args.boxes, args.box_thr) if args.boxes else None
    model = default_model(args.weights, args.config)
    options = PoseOptions(flip=args.flip, dark=args.dark)
    video = dict(boxes=args.bbox, every=args.every, start=args.start, end=args.end, smooth=args.smooth,
                 flip=args.flip, dark=args.dark, kpt_thr=args.kpt_thr)
    settings = {"bbox": args.bbox, "boxes": file_digest(args.boxes), "detector": file_digest(args.detector),
                "box_thr": args.box_thr, "video": {k: v for k, v in video.items() if k not in ("flip", "dark")}}
    s = infer_on_ray(args.images, args.out, model, options,
                     ClusterOptions(args.ray, args.workers, args.threads or 1),
                     boxes=Boxes(args.bbox, detections, (args.detector, args.box_thr) if args.detector else None),
                     draw=args.draw, kpt_thr=args.kpt_thr, video=video, settings=settings,
                     on_failure=lambda line: _err(f"refpose infer: error: {line}"))
    pools = "; ".join(p.describe() for p in s.pools) or "no pool: nothing to do"
    rate = (f"{s.done / s.seconds:.1f} images/s, {s.persons / s.seconds:.1f} persons/s, "
            if s.seconds > 0 and s.done else "")
    print(f"refpose infer: {s.done} images done now, {s.resumed} by an earlier run, {len(s.failures)} failed"
          + (f", {s.videos} videos" if s.videos else "") + f"; {s.persons} persons in {s.seconds:.1f} s ({rate}"
          f"Ray ready in {s.start_seconds:.1f} s); {pools} on {len(s.nodes)} node{'s' if len(s.nodes) != 1 else ''}"
          f" -> {s.out}", flush=True)
    if s.done + s.resumed == 0 and s.failures:
        return 2
    if model.trained is False:
        source = model.source or f"seeded initialisation of config {model.config.name}"
        _err(f"refpose infer: warning: untrained weights ({source}): the keypoints are not meaningful "
             "until trained weights are given with --weights")
    return 1 if s.failures else 0


def eval_runner(args):
    """The job runner of `refpose eval --images --ray` (`refpose.cluster.evaluate.RayJobRunner`) in a
    Ray session, or None without --ray; a context manager either way."""
    import contextlib

    if args.ray is None:
        if args.threads is not None:
            raise RefposeError("--threads goes with --ray")
        return contextlib.nullcontext(None)
    from ..cluster.evaluate import ray_runner

    return ray_runner(args.ray, args.workers, args.threads or 1)



def _err(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)              # above the progress bar
