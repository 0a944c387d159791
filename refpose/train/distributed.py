"""Where this process runs, and how the processes of a run agree: one process, or one of the
group torchrun starts on one or more machines.

torchrun describes the group in the environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR/PORT). Training's collectives (DDP's gradients, the loss every --log-every steps) go
over NCCL on GPUs and gloo on CPUs with the backend's default timeout, so that a real hang shows
within minutes. Waits that may be long by design (rank 0 writing a checkpoint, the shards of a
validation) go over a second group, gloo, with a timeout of its own (`LONG_WAIT`).

When one process fails, the others must not wait for it: `Abort` posts the reason in the run's
key-value store (torchrun's), and every process watches for it, so that all exit within seconds
with the same line and status, whatever collective they were blocked in.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import RefposeError
from . import TrainError

LONG_WAIT = datetime.timedelta(hours=2)       # a validation of COCO val on the slowest rank, with room
RENDEZVOUS_WAIT = datetime.timedelta(minutes=15)  # for every process of every node to start
ABORT_POLL_S = 0.25
STORE_LOST_S = 15.0                           # the store unreachable this long: the run is gone


@dataclass
class Dist:
    """This process's place in the run: world size, rank, device, and (several processes) the
    long-wait group and the abort watch."""
    world: int
    rank: int
    local_rank: int
    local_world: int
    device: torch.device
    control: object = None                    # the gloo group for long waits
    abort: "Abort | None" = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, amp: str | None) -> str:
    """'cpu', 'cuda' or 'auto' (CUDA when there is one) -> 'cpu' or 'cuda'; TrainError when
    CUDA is asked for and missing."""
    if device not in ("cpu", "cuda", "auto"):
        raise TrainError(f"--device must be cpu, cuda or auto, not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to PyTorch on this machine")
    return device


def launch_environment(environ=os.environ) -> tuple[int, int, int, int]:
    """(world, rank, local rank, local world) from the launcher's variables; TrainError, one line,
    for values that are not whole numbers or do not fit together, and for WORLD_SIZE > 1 without
    the rest of what torchrun sets."""
    def number(name: str, default: str) -> int:
        text = environ.get(name, default)
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise TrainError(f"the environment variable {name}={text!r} is not a whole number >= 0 "
                             "(torchrun sets it; unset it to train in one process)")
        return value
    world = number("WORLD_SIZE", "1")
    if world == 0:
        raise TrainError("the environment variable WORLD_SIZE=0: a run needs at least one process")
    if world > 1:
        absent = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
        if absent:
            raise TrainError(f"WORLD_SIZE={world} but {', '.join(absent)} not set: start the processes with "
                             "torchrun (torchrun --nproc_per_node N -m refpose train ...), or unset WORLD_SIZE")
    rank, local_rank = number("RANK", "0"), number("LOCAL_RANK", "0")
    local_world = number("LOCAL_WORLD_SIZE", "1" if world == 1 else str(world))
    if rank >= world or local_rank >= max(local_world, 1):
        raise TrainError(f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world}, "
                         f"LOCAL_WORLD_SIZE={local_world}")
    return world, rank, local_rank, max(local_world, 1)


def init_distributed(device: str) -> Dist:
    """One process, or this process's place in the group torchrun describes: NCCL on GPUs (with
    this process's GPU as `device_id`), gloo on CPUs, each with its default timeout; a gloo group
    for long waits; the abort watch."""
    world, rank, local_rank, local_world = launch_environment()
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainError(f"LOCAL_RANK={local_rank} but PyTorch sees {torch.cuda.device_count()} GPU(s) here")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return Dist(1, 0, 0, 1, dev)
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=RENDEZVOUS_WAIT))
        if device == "cuda":
            dist.init_process_group("nccl", store=store, rank=rank, world_size=world, device_id=dev)
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        control = dist.new_group(backend="gloo", timeout=LONG_WAIT)
        abort = Abort(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank)
    except (RuntimeError, ValueError, OSError) as e:     # torch's DistError is a RuntimeError
        raise TrainError(f"cannot join the run's {world} processes at {os.environ['MASTER_ADDR']}:"
                         f"{os.environ['MASTER_PORT']}: {first_line(e)}") from None
    return Dist(world, rank, local_rank, local_world, dev, control, abort)


def close(dd: Dist) -> None:
    """The end of a run that went well: stop watching, wait for everyone, leave the group."""
    if dd.world > 1:
        dd.abort.stop()
        dist.barrier(group=dd.control)
        dist.destroy_process_group()


# --- agreeing -----------------------------------------------------------------------------------
def on_main(dd: Dist, work, *args):
    """Run `work(*args)` on rank 0 and hand every rank its outcome: its result, or the same
    TrainError when it failed with one of refpose's errors (a full disk, a checkpoint that
    cannot be read), so that all stop together instead of waiting for rank 0."""
    outcome = [None]
    if dd.main:
        try:
            outcome = [("ok", work(*args))]
        except RefposeError as e:
            outcome = [("error", str(e))]
    if dd.world > 1:
        dist.broadcast_object_list(outcome, src=0, group=dd.control)
    kind, value = outcome[0]
    if kind == "error":
        raise TrainError(value)
    return value


def together(dd: Dist, work, *args):
    """Run `work(*args)` on every rank (checks of inputs each rank opens itself); when it fails on
    any rank with one of refpose's errors, every rank raises the first such error."""
    try:
        result, problem = work(*args), None
    except RefposeError as e:
        result, problem = None, str(e)
    if dd.world > 1:
        problems = [None] * dd.world
        dist.all_gather_object(problems, problem, group=dd.control)
        problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise TrainError(problem)
    return result


class StopVote:
    """Whether any rank was asked to stop (Ctrl-C, SIGTERM), agreed one step late over the gloo
    group: each step sends this rank's flag and reads the previous step's answer, so every rank
    stops after the same step and no step waits for the device."""

    def __init__(self, dd: Dist, flag):
        self.dd, self.flag, self.pending = dd, flag, None

    def poll(self) -> bool:
        """Once per step on every rank: True when the ranks agreed (as of the previous poll) to stop."""
        if self.dd.world == 1:
            return self.flag.set
        agreed = self.settle()
        self.buffer = torch.tensor([1.0 if self.flag.set else 0.0])
        self.pending = dist.all_reduce(self.buffer, group=self.dd.control, async_op=True)
        return agreed

    def settle(self) -> bool:
        """The answer still in flight (at the end of an epoch), then nothing pending."""
        if self.dd.world == 1:
            return self.flag.set
        if self.pending is None:
            return False
        self.pending.wait()
        self.pending = None
        return bool(self.buffer.item() > 0)


# --- failing together -----------------------------------------------------------------------------
class Abort:
    """The reason a run stops, posted once in torchrun's key-value store; a thread of every process
    polls it and ends its process with that line and status, wherever the main thread is blocked.

    The first process to post wins (`compare_set`), so every process prints the same line. A
    process that can no longer reach the store for STORE_LOST_S seconds takes the run as gone.
    """

    KEY = "refpose/train/abort"

    def __init__(self, host: str, port: int, rank: int):
        self.rank = rank
        self.store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=30),
                                   wait_for_workers=False)
        self.prefix = f"{self.KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.lock = threading.Lock()
        self.claimed = False                  # this process is already on its way out with a line
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="refpose-abort-watch", daemon=True)
        self.thread.start()

    def post(self, line: str, status: int) -> tuple[str, int]:
        """Post a reason (unless one is there already) and return the one that holds."""
        with self.lock:
            self.claimed = True
            try:
                value = self.store.compare_set(self.prefix, "", json.dumps({"line": line, "status": status}))
                got = json.loads(value)
                return got["line"], int(got["status"])
            except Exception:                 # the store is gone too: this process's own reason stands
                return line, status

    def reason(self, wait_s: float = 0.0) -> tuple[str, int] | None:
        """The posted reason, waiting up to `wait_s` seconds for one; None when there is none."""
        deadline = _now() + wait_s
        while True:
            with self.lock:
                try:
                    if self.store.check([self.prefix]):
                        got = json.loads(self.store.get(self.prefix))
                        return got["line"], int(got["status"])
                except Exception:
                    pass
            if _now() >= deadline:
                return None
            self.stopped.wait(ABORT_POLL_S)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _watch(self) -> None:
        lost_since = None
        while not self.stopped.wait(ABORT_POLL_S):
            with self.lock:
                if self.claimed:
                    return
                try:
                    got = json.loads(self.store.get(self.prefix)) if self.store.check([self.prefix]) else None
                    lost_since = None
                except Exception as e:
                    got = None
                    lost_since = lost_since or _now()
                    if _now() - lost_since > STORE_LOST_S:
                        got = {"line": f"lost contact with the run (its store at {os.environ.get('MASTER_ADDR')}:"
                                       f"{os.environ.get('MASTER_PORT')}: {first_line(e)}); another process "
                                       "or node of the run has ended", "status": 2}
                if got is None:
                    continue
                self.claimed = True
            exit_now(got["line"], int(got["status"]))


def fail_together(dd: Dist, e: BaseException) -> None:
    """End this process of a several-process run with the run's one line: the reason another
    process posted, or this one's, posted for the others. Never returns."""
    import traceback

    posted = dd.abort.reason()
    if posted is not None:
        exit_now(*posted)
    if isinstance(e, KeyboardInterrupt):
        line, status = "interrupted", 130
    elif isinstance(e, RefposeError):
        line, status = str(e), 2
    elif isinstance(e, dist.DistError) or "gloo" in str(e).lower() or "connection" in str(e).lower():
        posted = dd.abort.reason(wait_s=10)   # the process that failed posts before it exits
        if posted is not None:
            exit_now(*posted)
        line, status = f"lost contact with another process of the run ({first_line(e)})", 2
    else:                                     # an error in refpose itself: its traceback, here
        traceback.print_exc()
        line, status = f"{type(e).__name__} on rank {dd.rank}: {first_line(e)} (see that rank's traceback)", 1
    exit_now(*dd.abort.post(line, status))


def exit_now(line: str, status: int) -> None:
    """End this process at once with the run's line: the main thread may be blocked in a
    collective that will never complete."""
    try:
        sys.stderr.write(f"refpose train: error: {line}\n")
        sys.stderr.flush()
    finally:
        os._exit(status)


def _now() -> float:
    import time
    return time.monotonic()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
