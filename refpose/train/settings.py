"""The settings of a training run, with their defaults: the one place they are given (the CLI
reads them from here). No torch: `refpose train --help` works without it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .targets import SIGMA

MAX_SIGMA = 10.0    # heatmap pixels: a Gaussian of 3 sigma then still fits a 64x48 map's scale (MMPose uses 2-3)


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
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = False
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


DEFAULTS = {f.name: f.default for f in fields(TrainSettings)}
