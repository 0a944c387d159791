"""`refpose train`: train WGNet (the PyTorch twin) on COCO keypoints and write a weights file.

Needs the torch extra. `torchrun --nproc_per_node N -m refpose train ...` runs one process per
device (DistributedDataParallel); rank 0 alone logs and writes, every rank validates its share.
"""
from __future__ import annotations

from dataclasses import fields

from ..config import CONFIGS
from ..train.settings import AMP_DTYPES, DEFAULTS as D, MAX_AUTO_WORKERS, MAX_SIGMA, TrainSettings
from .args import float_range, int_range, nonnegative_int, positive_int, seed

PAPER = "paper section 4.2"
MMPOSE = "MMPose td-hm_hrnet-w32_8xb64-210e_coco-256x192"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train WGNet on COCO keypoints (PyTorch twin) and write a refpose weights file",
        description="Train WGNet with the paper's recipe (section 4.2) and, where the paper is silent, "
        f"the HRNet / {MMPOSE} recipe: Adam, linear warm-up, cosine learning rate, Gaussian heatmaps "
        "(sigma 2) with per-joint target weights, MSE with target weights, flip / half-body / random "
        "scale, rotation and shift. The run folder RUN gets run.json, metrics.jsonl, curves.png, "
        "last.pt, best.pt and model.safetensors (refpose weights, trained: true). "
        "Several processes: torchrun --nproc_per_node N -m refpose train ... Needs PyTorch "
        "(pip install 'refpose[torch]').")
    p.add_argument("--config", required=True, help=f"the network: {', '.join(CONFIGS)} "
                   "(tiny is a small config for tests, not a paper variant)")
    p.add_argument("--train-ann", required=True, metavar="TRAIN.json", help="COCO person-keypoints annotations")
    p.add_argument("--train-images", required=True, metavar="DIR", help="the folder of the training images")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder")
    v = p.add_argument_group("validation (as `refpose eval --images`: flip test, OKS-NMS, pycocotools AP)")
    v.add_argument("--val-ann", metavar="VAL.json", help="COCO person-keypoints annotations to validate on")
    v.add_argument("--val-images", metavar="DIR", help="their images")
    v.add_argument("--val-boxes", metavar="DETS.json",
                   help="COCO person detections to validate on (default: the ground-truth boxes)")
    v.add_argument("--val-every", type=positive_int, default=D["val_every"], metavar="N",
                   help=f"validate every N epochs and after the last (default {D['val_every']}: {MMPOSE} val_interval)")
    r = p.add_argument_group("recipe")
    r.add_argument("--epochs", type=int_range(1, 100_000), default=D["epochs"], help=f"epochs (default {D['epochs']}: {PAPER})")
    r.add_argument("--batch", type=int_range(1, 4096), default=D["batch"], help=f"persons per batch per process (default {D['batch']}: {MMPOSE}, "
                   "64 per GPU)")
    r.add_argument("--lr", type=float_range(0.0, 10.0, lo_open=True), default=D["lr"], help=f"peak learning rate of Adam (default {D['lr']:g}: {PAPER})")
    r.add_argument("--min-lr", type=float_range(0.0, 10.0), default=D["min_lr"],
                   help=f"learning rate at the end of the cosine, then held (default {D['min_lr']:g}: {PAPER})")
    r.add_argument("--cosine-end", type=float_range(0.0, 1.0, lo_open=True, what="a fraction"), default=D["cosine_end"], metavar="FRACTION",
                   help=f"the cosine ends after this fraction of the epochs (default {D['cosine_end']:g}: {PAPER}, "
                   "epoch 170 of 200)")
    r.add_argument("--warmup-iters", type=nonnegative_int, default=D["warmup_iters"],
                   help=f"linear warm-up iterations (default {D['warmup_iters']}: {MMPOSE}, LinearLR end=500)")
    r.add_argument("--warmup-factor", type=float_range(0.0, 1.0, lo_open=True, what="a factor"), default=D["warmup_factor"],
                   help=f"learning-rate factor at the first iteration (default {D['warmup_factor']:g}: {MMPOSE}, "
                   "start_factor)")
    r.add_argument("--weight-decay", type=float_range(0.0, 1.0), default=D["weight_decay"],
                   help=f"Adam weight decay (default {D['weight_decay']:g}: {MMPOSE})")
    r.add_argument("--sigma", type=float_range(0.0, MAX_SIGMA, lo_open=True, what="a sigma in heatmap pixels"), default=D["sigma"], help="Gaussian sigma of the target heatmaps, in heatmap "
                   f"pixels (default {D['sigma']:g}: HRNet, {MMPOSE})")
    r.add_argument("--no-augment", dest="augment", action="store_false",
                   help=f"no flip, half-body, scale, rotation or shift (default: on, {MMPOSE} defaults)")
    r.add_argument("--scale-lr", action="store_true",
                   help="multiply --lr by the number of processes (linear scaling rule, Goyal et al. 2017); "
                   "default off: the paper's lr is for one device")
    r.add_argument("--seed", type=seed, default=D["seed"],
                   help=f"seed of the weights, the order and the augmentation (default {D['seed']})")
    e = p.add_argument_group("execution")
    e.add_argument("--device", choices=("cpu", "cuda", "auto"), default=D["device"],
                   help=f"default {D['device']}: CUDA when PyTorch sees a GPU, else the CPU")
    e.add_argument("--amp", nargs="?", const="fp16", choices=AMP_DTYPES, default=D["amp"],
                   help="mixed precision: fp16 (the default of a bare --amp; GradScaler skips steps whose "
                   "gradients overflow) or bf16 (float32's range, no scaler; the CPU's mixed precision). "
                   "Default off: float32, with TF32 matmuls on Ampere and later GPUs unless --deterministic")
    e.add_argument("--workers", type=int_range(0, 64), default=D["workers"],
                   help="data-loading processes per training process; 0 loads in-process. Default: the "
                   f"cores this process may use, shared by the training processes of the machine, less one, "
                   f"at most {MAX_AUTO_WORKERS} (a GPU needs 3-7 to be kept busy: see docs/training-distributed.md)")
    e.add_argument("--threads", type=int_range(1, 1024), help="PyTorch CPU threads (default: PyTorch's choice)")
    e.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="stop after N optimiser steps in all (the schedule still spans --epochs); last.pt "
                   "and model.safetensors are written, --resume continues")
    e.add_argument("--log-every", type=positive_int, default=D["log_every"], metavar="N",
                   help=f"steps per line of metrics.jsonl (default {D['log_every']}: {MMPOSE} logger interval)")
    e.add_argument("--resume", action="store_true",
                   help="continue the run in RUN from RUN/last.pt (the recipe settings must be the same)")
    e.add_argument("--deterministic", action="store_true",
                   help="deterministic PyTorch algorithms: on the CPU a resumed run then ends with the same "
                   "weights as one never stopped")
    e.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (the one-line summary per epoch stays)")
    p.set_defaults(run=run_train)


def settings_from_args(args) -> TrainSettings:
    """The run's settings from the parsed command line: one option per field."""
    return TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})


def run_train(args) -> int:
    from ..train import require_torch

    require_torch()
    from ..train.loop import train

    result = train(settings_from_args(args))
    if result.out is not None:
        best = f"; best validation AP {result.best['AP']:.3f} at epoch {result.best['epoch']}" if result.best else ""
        print(f"wrote {result.out}/model.safetensors after {result.epoch:.2f} epochs ({result.stopped}){best}")
    return 0
