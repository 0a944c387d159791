"""`refpose synth`: write a synthetic COCO person-keypoints dataset (for smoke tests only).

Exit status: 0; 2 for bad arguments or an output folder that exists (one line on stderr).
"""
from __future__ import annotations

import argparse

from ..data.synth import DEFAULT_PERSONS, DEFAULT_SIZE, JPEG_QUALITY
from .args import positive_int, seed


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 320x240)") from None
    return w, h


def _persons(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN-MAX (e.g. 1-4) or a single count")
    return parts[0], parts[-1]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth", help="write a synthetic COCO person-keypoints dataset (smoke tests, not a COCO substitute)",
        description="Write OUT/annotations.json (COCO person keypoints, 17 joints) and OUT/images/: "
        "articulated stick figures in random poses, sizes, colours and rotations on cluttered "
        "backgrounds, several per image, with occluded joints labelled visibility 1 and joints "
        "outside the image 0. The same seed gives the same bytes. The folder appears whole or not "
        "at all. For smoke tests of training, evaluation and ports only: no substitute for COCO.")
    p.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty, unless --force)")
    p.add_argument("--images", type=positive_int, default=100, metavar="N", help="number of images (default 100)")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="random seed (default 0); each image depends on the seed and its index only")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                   help=f"image size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--persons", type=_persons, default=DEFAULT_PERSONS, metavar="MIN-MAX",
                   help=f"figures per image, drawn uniformly (default {DEFAULT_PERSONS[0]}-{DEFAULT_PERSONS[1]})")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg",
                   help=f"image format (default jpg, quality {JPEG_QUALITY})")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists and is not empty (it is swapped out only once "
                   "the new dataset is complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_synth)


def run_synth(args) -> int:
    from ..data.synth import synthesize

    s = synthesize(args.out, args.images, args.seed, size=args.size, persons=args.persons, fmt=args.format,
                   force=args.force, progress=not args.quiet)
    joints = s.visible + s.occluded + s.outside
    print(f"wrote {s.out}: {s.images} images, {s.persons} persons; joints visible {s.visible}, "
          f"occluded {s.occluded}, outside the image {s.outside} (of {joints}); "
          f"{s.images / s.seconds:.1f} images/s")
    return 0
