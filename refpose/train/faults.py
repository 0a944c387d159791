"""Faults injected on purpose, for the tests of what a run does when one process fails.

REFPOSE_TRAIN_FAULT="rank1:step3:raise" makes rank 1 fail during its third step; several faults
are separated by commas. Kinds: `raise` (an error of refpose's), `oom` (PyTorch's out-of-memory
error), `nan` (a NaN loss), `fp16-overflow` (gradients that overflow, as float16 can: GradScaler's
to skip), `sigterm` (the process is sent SIGTERM, as a scheduler's preemption does), `write`
(rank 0's writing fails from that step on). Unset, nothing happens.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from . import TrainError

VARIABLE = "REFPOSE_TRAIN_FAULT"
KINDS = ("raise", "oom", "nan", "fp16-overflow", "sigterm", "write")


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    kind: str


def parse(text: str) -> list[Fault]:
    """Faults from the variable's text; TrainError for one that does not read as rankR:stepS:KIND."""
    faults = []
    for spec in filter(None, (part.strip() for part in text.split(","))):
        parts = spec.split(":")
        ok = (len(parts) == 3 and parts[0].startswith("rank") and parts[0][4:].isdigit()
              and parts[1].startswith("step") and parts[1][4:].isdigit() and parts[2] in KINDS)
        if not ok:
            raise TrainError(f"{VARIABLE}={text!r}: expected rankR:stepS:KIND with KIND one of {', '.join(KINDS)}")
        faults.append(Fault(int(parts[0][4:]), int(parts[1][4:]), parts[2]))
    return faults


class Faults:
    """The faults of this rank; each hook is a no-op unless one is due."""

    def __init__(self, rank: int, environ=os.environ):
        self.mine = [f for f in parse(environ.get(VARIABLE, "")) if f.rank == rank]

    def _due(self, step: int, kind: str) -> bool:
        return any(f.step == step and f.kind == kind for f in self.mine)

    def loss(self, step: int, loss):
        """During step `step` (1-based), after the forward pass."""
        import torch

        if self._due(step, "raise"):
            raise TrainError(f"fault injected by {VARIABLE} at step {step}")
        if self._due(step, "oom"):
            raise torch.OutOfMemoryError(f"CUDA out of memory (fault injected by {VARIABLE} at step {step})")
        if self._due(step, "sigterm"):
            os.kill(os.getpid(), signal.SIGTERM)
        return loss * float("nan") if self._due(step, "nan") else loss

    def to_backward(self, step: int, scaled_loss):
        """The scaled loss whose gradients are taken: infinite ones for `fp16-overflow`."""
        return scaled_loss * float("inf") if self._due(step, "fp16-overflow") else scaled_loss

    def writing(self, step: int) -> None:
        """Before rank 0 writes the run folder at `step`."""
        from ..errors import OutputError

        if any(f.kind == "write" and step >= f.step for f in self.mine):
            raise OutputError(f"cannot write the run folder (fault injected by {VARIABLE} from step {step})")
