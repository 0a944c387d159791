"""Training checkpoints (`last.pt`, `best.pt`): what they hold, writing them whole, reading them back."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ..fileio import write_atomic
from . import TrainError

CHECKPOINT_FORMAT = "refpose-train/1"


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save into memory, then one atomic write: a crash never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # a damaged file fails in many ways inside the unpickler
        raise TrainError(f"{path}: not a readable checkpoint ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a refpose train checkpoint")
    return ckpt
