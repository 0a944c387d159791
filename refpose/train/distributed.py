"""Where this process runs: one process, or one of the process group torchrun starts.

torchrun describes the group in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT);
the device is the GPU of LOCAL_RANK, or the CPU. Collectives go over NCCL on GPUs and gloo on CPUs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import TrainError


@dataclass
class Dist:
    """This process's place in the run: world size, rank, device."""
    world: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, amp: bool) -> str:
    """'cpu', 'cuda' or 'auto' (CUDA when there is one) -> 'cpu' or 'cuda'; TrainError when
    CUDA is asked for and missing, or AMP without CUDA."""
    if device not in ("cpu", "cuda", "auto"):
        raise TrainError(f"--device must be cpu, cuda or auto, not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to PyTorch on this machine")
    if amp and device != "cuda":
        raise TrainError("--amp (float16 mixed precision) needs --device cuda")
    return device


def init_distributed(device: str) -> Dist:
    """One process, or the process group torchrun describes in the environment (WORLD_SIZE,
    RANK, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # rank 0 validates with refpose on the CPU while the others wait at a barrier: on COCO
        # val that can outlast the default collective timeout (10 minutes for NCCL)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=datetime.timedelta(hours=4))
    return Dist(world, rank, local_rank, dev)


def any_rank(flag: bool, dd: Dist) -> bool:
    """True on every rank when any rank's flag is set (all ranks must stop at the same step)."""
    if dd.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dd.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier(dd: Dist) -> None:
    if dd.world > 1:
        dist.barrier()


def close(dd: Dist) -> None:
    if dd.world > 1:
        dist.barrier()
        dist.destroy_process_group()
