"""The settings of a training run, with their defaults: the one place they are given (the CLI
reads them from here), and the checks that need more than one option. No torch: `refpose train
--help` works without it."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from . import TrainError
from .targets import SIGMA

MAX_SIGMA = 10.0    # heatmap pixels: a Gaussian of 3 sigma then still fits a 64x48 map's scale (MMPose uses 2-3)
MAX_AUTO_WORKERS = 8  # loader processes per training process: 8 x ~70 crops/s each is above what one GPU takes
AMP_DTYPES = ("fp16", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a run; the CLI documents the source of each default."""
    config: str
    train_ann: str
    train_images: str
    out: str
    val_ann: str | None = None
    val_images: str | None = None
    val_boxes: str | None = None
    epochs: int = 200
    batch: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    cosine_end: float = 0.85
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    weight_decay: float = 0.0
    sigma: float = SIGMA
    augment: bool = True
    scale_lr: bool = False
    workers: int | None = None            # None: from the cores per process (`default_workers`)
    seed: int = 0
    device: str = "auto"
    amp: str | None = None                # "fp16" or "bf16" mixed precision; None: float32
    max_steps: int | None = None
    val_every: int = 10
    log_every: int = 50
    resume: bool = False
    deterministic: bool = False
    threads: int | None = None
    progress: bool | None = None

    # what a resumed run must share with the run it continues
    RECIPE = ("config", "train_ann", "train_images", "epochs", "batch", "lr", "min_lr", "cosine_end",
              "warmup_iters", "warmup_factor", "weight_decay", "sigma", "augment", "scale_lr", "seed", "amp")

    def recipe(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in self.RECIPE}

    def check(self) -> None:
        """TrainError, one line, for what no single option's type can see; before anything is read
        or written. (Each option's own type and range is checked as it is parsed: `refpose.cli.args`.)"""
        from ..config import get_config

        cfg = get_config(self.config)
        if cfg.dataset != "coco":
            # training reads COCO person keypoints only: MPII's joints, flip pairs, half-body split
            # and PCKh validation are not wired into it
            raise TrainError(f"--config {cfg.name}: training supports COCO keypoint configs only "
                             f"({cfg.name} is for {cfg.dataset.upper()}'s {cfg.num_keypoints} joints); "
                             "MPII training is not implemented")
        if self.min_lr > self.lr:
            raise TrainError(f"--min-lr {self.min_lr:g} is above --lr {self.lr:g}: the cosine would raise "
                             "the learning rate; give a --min-lr at most --lr")
        if (self.val_ann is None) != (self.val_images is None):
            raise TrainError("--val-ann and --val-images go together")
        if self.val_boxes is not None and self.val_ann is None:
            raise TrainError("--val-boxes needs --val-ann and --val-images")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise TrainError(f"--amp must be one of {', '.join(AMP_DTYPES)}, not {self.amp!r}")
        if self.workers is not None and self.workers < 0:
            raise TrainError("--workers must be 0 or more")


def default_workers(cores: int | None = None, processes: int | None = None) -> int:
    """Loader processes per training process when --workers is not given: the cores this process
    may use, shared by the training processes of this machine (LOCAL_WORLD_SIZE), less one for the
    training process itself, at most MAX_AUTO_WORKERS. One crop takes ~14 ms of a core, so a GPU
    that takes 190-460 crops/s needs 3-7 of them."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if processes is None:
        try:
            processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            processes = 1
    return max(0, min(MAX_AUTO_WORKERS, cores // processes - 1))


DEFAULTS = {f.name: f.default for f in fields(TrainSettings)}
