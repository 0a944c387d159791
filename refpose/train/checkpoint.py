"""Training checkpoints (`last.pt`, `best.pt`): what they hold, writing them whole, reading them back.

A checkpoint is read once, by rank 0, through refpose's one bounded reader of PyTorch files
(`porting.twin.load_torch_file`), and its whole structure is checked there (`check_checkpoint`),
before anything of the run folder changes: a damaged or edited file is one line naming the field.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from ..fileio import write_atomic
from . import TrainError

CHECKPOINT_FORMAT = "refpose-train/1"
BYTES_PER_PARAM = 16         # float32 weights and Adam's two moments (12), with room
CHECKPOINT_SLACK = 16 << 20  # schedule, scaler, RNG state, settings
AMP_BEFORE = {False: None, True: "fp16"}   # `amp` of checkpoints written when it was a flag


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save into memory, then one atomic write: a crash never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def read_checkpoint(path: Path, model: torch.nn.Module, recipe: dict) -> dict:
    """The checkpoint of a run with this `recipe` (the settings a resumed run must share) and
    `model`, checked whole (`check_fields`, then the recipe, then `check_tensors`); TrainError,
    one line naming the file, for anything else."""
    from ..porting.twin import load_torch_file

    params = sum(p.numel() for p in model.state_dict().values())
    ckpt = load_torch_file(path, BYTES_PER_PARAM * params + CHECKPOINT_SLACK, error=TrainError,
                           what="training checkpoint")
    problem = check_fields(ckpt)
    if problem:
        raise TrainError(f"{path}: damaged or not this run's checkpoint: {problem}")
    made = dict(ckpt["settings"])
    if isinstance(made.get("amp"), bool):
        made["amp"] = AMP_BEFORE[made["amp"]]
    differ = {k: (made.get(k), v) for k, v in recipe.items() if not _same_setting(k, made.get(k), v)}
    if differ:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
        raise TrainError(f"--resume: {path} was made with other settings ({what}); "
                         "give the same ones, or another --out for a new run")
    problem = check_tensors(ckpt, model)
    if problem:
        raise TrainError(f"{path}: damaged or not this run's checkpoint: {problem}")
    return ckpt


PATH_SETTINGS = ("train_ann", "train_images")


def _same_setting(key: str, made, given) -> bool:
    """Equal, or for a path two names of one file or folder (a run resumed with absolute paths
    where it was started with relative ones, or through a link)."""
    if made == given:
        return True
    if key not in PATH_SETTINGS or not (isinstance(made, str) and isinstance(given, str)):
        return False
    try:
        return os.path.samefile(made, given)
    except (OSError, ValueError):
        return False


def check_fields(ckpt) -> str | None:
    """What is wrong with the fields of a loaded checkpoint other than its tensors, in a phrase,
    or None: every field `Run` reads, with its type."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        return f"no format {CHECKPOINT_FORMAT!r}"
    missing = [k for k in ("state_dict", "optimizer", "scheduler", "scaler", "step", "rng", "settings", "world", "best")
               if k not in ckpt]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("step", "world"):
        value = ckpt[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "step" else 1):
            return f"{key} must be a whole number >= {0 if key == 'step' else 1}, got {value!r}"
    if "validated_step" in ckpt and ckpt["validated_step"] is not None and (
            not isinstance(ckpt["validated_step"], int) or isinstance(ckpt["validated_step"], bool)):
        return f"validated_step must be a whole number, got {ckpt['validated_step']!r}"
    settings = ckpt["settings"]
    if not isinstance(settings, dict):
        return "settings must be a dict"
    best = ckpt["best"]
    if not isinstance(best, dict) or (best and not all(
            isinstance(best.get(k), (int, float)) and not isinstance(best.get(k), bool)
            for k in ("AP", "AP50", "epoch", "step"))):
        return "best must be empty or hold AP, AP50, epoch and step"
    for key in ("scheduler", "scaler"):
        if not isinstance(ckpt[key], dict):
            return f"{key} must be a dict"
    rng = ckpt["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and (rng.get("cuda") is None or isinstance(rng["cuda"], torch.Tensor))):
        return "rng must hold the torch generator state (a uint8 tensor)"
    return None


def check_tensors(ckpt: dict, model: torch.nn.Module) -> str | None:
    """The weights and Adam's moments of a checkpoint against `model`'s shapes, or None."""
    return _check_state(ckpt["state_dict"], model.state_dict()) or _check_optimizer(ckpt["optimizer"],
                                                                                    list(model.parameters()))


def _check_state(state, expected: dict) -> str | None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "state_dict must be a dict of tensors named by strings"
    absent, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if absent or extra:
        return f"state_dict: {'missing ' + absent[0] if absent else 'unexpected ' + extra[0]}" \
               f"{f' and {len(absent) + len(extra) - 1} more' if len(absent) + len(extra) > 1 else ''}"
    for key, target in expected.items():
        if tuple(state[key].shape) != tuple(target.shape):
            return f"state_dict: {key} has shape {tuple(state[key].shape)}, the model has {tuple(target.shape)}"
        if state[key].is_floating_point() != target.is_floating_point():
            return f"state_dict: {key} has dtype {state[key].dtype}, the model has {target.dtype}"
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            return f"state_dict: {key} holds values that are not finite"
    return None


def _check_optimizer(opt, params: list) -> str | None:
    """Adam's state_dict: one parameter group over the model's parameters, and for each
    parameter its moments with the parameter's shape."""
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and len(opt["param_groups"]) == 1 and isinstance(opt["param_groups"][0], dict)):
        return "optimizer must be Adam's state_dict with one parameter group"
    ids = opt["param_groups"][0].get("params")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids) or len(ids) != len(params):
        return f"optimizer: the parameter group must number the model's {len(params)} parameters"
    for i, p in zip(ids, params):
        state = opt["state"].get(i)
        if state is None:
            continue                          # no step taken for it yet
        if not isinstance(state, dict):
            return f"optimizer: the state of parameter {i} must be a dict"
        step = state.get("step")
        if not (isinstance(step, torch.Tensor) and step.numel() == 1 or isinstance(step, (int, float))) \
                or isinstance(step, bool):
            return f"optimizer: the step count of parameter {i} must be a number"
        for moment in ("exp_avg", "exp_avg_sq"):
            t = state.get(moment)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(p.shape):
                return f"optimizer: {moment} of parameter {i} must have shape {tuple(p.shape)}"
    return None
