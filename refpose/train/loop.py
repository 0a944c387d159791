"""The training loop: the PyTorch twin, Adam, warm-up and cosine, MSE with target weights.

Recipe (DESIGN section 6): the paper, section 4.2 (200 epochs; lr 1e-3 decayed by a cosine to
1e-5 at epoch 170, then held) and, where it is silent, MMPose's
td-hm_hrnet-w32_8xb64-210e_coco-256x192 (Adam without weight decay, linear warm-up over 500
iterations from 0.001 x lr, `KeypointMSELoss(use_target_weight=True)`, batch 64 per device,
validation every 10 epochs, the best checkpoint by AP kept). One process, or one per device
under torchrun (DistributedDataParallel; rank 0 alone logs, validates and writes).

`train` reads as the run goes: check the settings, open the run folder, index the data, join
the process group, build the model and its optimiser, then epochs until done; `Run` holds
what changes as it goes (the step, the best validation) and does one epoch and its end.
"""
from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import torch                       # after `import refpose`, which asked OpenMP not to spin (refpose.threads)
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import get_config, variant_of
from ..errors import RefposeError
from . import TrainError
from ..pose.imageio import read_image
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .data import Augment, load_train_set, make_sample, sample_rng
from .distributed import Dist, any_rank, barrier, close, init_distributed, resolve_device
from .runlog import RunLog
from .settings import TrainSettings

HEAD_INIT_STD = 0.001      # MMPose HeatmapHead init: Normal(std=0.001) for the final conv, bias 0


class LrSchedule:
    """lr factor at an iteration: linear warm-up from `warmup_factor` over `warmup_iters`
    (MMPose `LinearLR`), times a cosine from 1 to min_lr/lr that ends after `cosine_steps`
    iterations and is then held (paper section 4.2: 1e-3 to 1e-5 at epoch 170 of 200)."""

    def __init__(self, lr: float, min_lr: float, cosine_steps: int, warmup_iters: int, warmup_factor: float):
        self.floor = min_lr / lr
        self.cosine_steps = max(1, cosine_steps)
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def __call__(self, step: int) -> float:
        t = min(step, self.cosine_steps) / self.cosine_steps
        factor = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < self.warmup_iters:
            factor *= self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_iters
        return factor


def keypoint_mse(heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MMPose `KeypointMSELoss(use_target_weight=True)`: mean over N, K, h, w of the squared
    error times each joint's target weight."""
    return ((heatmaps - targets) ** 2 * weights[:, :, None, None]).mean()


class PersonCrops(Dataset):
    """Training samples: item (epoch, index) is person `index` seen with the random stream
    of that epoch, so a sample does not depend on the worker or rank that makes it."""

    def __init__(self, persons, input_size, heatmap_size, seed: int, aug: Augment, sigma: float, variant):
        self.persons, self.input_size, self.heatmap_size = persons, input_size, heatmap_size
        self.seed, self.aug, self.sigma, self.variant = seed, aug, sigma, variant

    def __len__(self) -> int:
        return len(self.persons)

    def __getitem__(self, item):
        epoch, index = item
        person = self.persons[index]
        x, heatmaps, weights = make_sample(read_image(person.image), person, self.input_size, self.heatmap_size,
                                           sample_rng(self.seed, epoch, index), self.aug, self.sigma,
                                           mean=self.variant.mean, std=self.variant.std)
        return torch.from_numpy(x), torch.from_numpy(heatmaps), torch.from_numpy(weights)


def _init_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the main process stops the run, the workers keep
    # serving the batch in flight instead of dying under it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # OpenCV's own thread pool in a forked worker competes with the training threads
    # (MMPose `setup_multi_processes` does the same)
    import cv2
    cv2.setNumThreads(0)


@dataclass
class TrainResult:
    """What a run did: where it wrote, how far it went, and its best validation."""
    out: str | None                       # None on ranks other than 0
    step: int
    epoch: float
    stopped: str                          # "finished", "max-steps" or "interrupted"
    best: dict = field(default_factory=dict)


class _StopFlag:
    """Set by Ctrl-C; the loop stops after the step in progress and saves last.pt."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.set:                  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.set = True
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:                # not the main thread: Ctrl-C stays KeyboardInterrupt
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _versions() -> dict:
    import cv2

    from .. import __version__
    return {"refpose": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "python": platform.python_version()}


def _worker_error_line(e: Exception) -> str:
    """The last line of an error re-raised by a DataLoader worker (it carries the traceback)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last



def train(s: TrainSettings) -> TrainResult:
    """Run (or continue) a training run and write its folder; see the module docstring."""
    device = resolve_device(s.device, s.amp)
    check_settings(s)
    configure_torch(s, device)
    cfg = get_config(s.config)
    resume = open_run_folder(s)
    data = load_train_set(s.train_ann, s.train_images)
    dd = init_distributed(device)
    run = Run(s, cfg, dd, device, data, resume)
    with _StopFlag() as stop:
        while run.step < run.max_steps:
            epoch_done = run.train_epoch(stop)
            if run.stopped == "interrupted" and not epoch_done:
                break                         # an epoch's last step still gets its summary and validation
            run.end_of_epoch(epoch_done)
            barrier(dd)
            if run.stopped == "interrupted":
                break
        if run.stopped != "interrupted" and run.step < run.total_steps:
            run.stopped = "max-steps"
    run.finish()
    close(dd)
    if run.stopped == "interrupted":
        raise KeyboardInterrupt
    return TrainResult(str(run.out) if dd.main else None, run.step, run.step / run.steps_per_epoch, run.stopped, run.best)


def check_settings(s: TrainSettings) -> None:
    """What the option types cannot see alone; before anything is read or written."""
    if s.epochs < 1 or s.batch < 1 or s.val_every < 1 or s.log_every < 1 or s.workers < 0:
        raise TrainError("--epochs, --batch, --val-every and --log-every must be positive, --workers >= 0")
    if not (0 < s.cosine_end <= 1) or s.lr <= 0 or s.min_lr < 0:
        raise TrainError("--lr must be positive, --min-lr >= 0 and the cosine end in (0, 1]")
    if (s.val_ann is None) != (s.val_images is None):
        raise TrainError("--val-ann and --val-images go together")


def configure_torch(s: TrainSettings, device: str) -> None:
    """Threads and determinism, process-wide."""
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)   # CPU ops are; a CUDA op that is not warns
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device == "cuda":
        torch.backends.cudnn.benchmark = True


def open_run_folder(s: TrainSettings) -> dict | None:
    """The checkpoint to continue (--resume), or None for a new run; TrainError when the folder
    does not fit the request."""
    out = Path(s.out)
    last_path = out / "last.pt"
    if not s.resume:
        if last_path.exists():
            raise TrainError(f"{out} already holds a run ({last_path}); --resume continues it, or choose another --out")
        return None
    if not last_path.is_file():
        raise TrainError(f"--resume: {last_path} does not exist (nothing to continue)")
    resume = load_checkpoint(last_path)
    differ = {k: (resume["settings"].get(k), v) for k, v in s.recipe().items() if resume["settings"].get(k) != v}
    if differ:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
        raise TrainError(f"--resume: {last_path} was made with other settings ({what}); "
                         "give the same ones, or another --out for a new run")
    return resume


class Run:
    """One training run in progress: the model, its optimiser and schedule, the step, the best
    validation, and (on rank 0) the run folder's writer."""

    def __init__(self, s: TrainSettings, cfg, dd: Dist, device: str, data, resume: dict | None):
        self.s, self.cfg, self.dd, self.device, self.data = s, cfg, dd, device, data
        self.out = Path(s.out)
        self.last_path = self.out / "last.pt"
        self.say = (lambda text: print(text, file=sys.stderr, flush=True)) if dd.main else (lambda text: None)
        if resume is not None and resume["world"] != dd.world:
            raise TrainError(f"--resume: {self.last_path} was made by {resume['world']} process(es), "
                             f"this run has {dd.world}; the batches would differ")
        self._report_missing()
        self._build_data()
        self._build_model()
        self.step, self.best = 0, {}
        if resume is not None:
            self._resume(resume)
        self.stopped = "finished"
        self.saved_step = None                # the step last.pt holds, once this run has written it
        self.max_steps = self.total_steps if s.max_steps is None else min(s.max_steps, self.total_steps)
        self.log = RunLog(self.out, s, cfg, data) if dd.main else None
        if self.log is not None:
            self.log.start(self._run_info(), self.step)

    # --- setup ---------------------------------------------------------------------------------
    def _report_missing(self) -> None:
        data = self.data
        for path in data.missing[:10]:
            self.say(f"refpose train: missing image {path}")
        if data.missing:
            self.say(f"refpose train: {len(data.missing)} image(s) missing, {data.missing_persons} person(s) left out"
                     + (" (the first 10 above; all in run.json)" if len(data.missing) > 10 else ""))

    def _build_data(self) -> None:
        s, dd, cfg, data = self.s, self.dd, self.cfg, self.data
        self.dataset = PersonCrops(data.persons, cfg.input_size, cfg.output_size(), s.seed,
                                   Augment() if s.augment else Augment.off(), s.sigma, variant_of(cfg.name))
        self.sampler = DistributedSampler(self.dataset, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                                          seed=s.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // s.batch
        if self.steps_per_epoch == 0:
            raise TrainError(f"{len(data.persons)} persons over {dd.world} process(es) do not fill one batch of "
                             f"{s.batch}; lower --batch")
        self.total_steps = s.epochs * self.steps_per_epoch
        self.effective_batch = s.batch * dd.world
        self.lr = s.lr * self.effective_batch / s.batch if s.scale_lr else s.lr
        self.say(f"refpose train: {cfg.name}, {len(data.persons)} persons in {data.images} images "
                 f"({data.skipped_unlabelled} without labelled keypoints skipped); {dd.world} process(es) on "
                 f"{self.device}, batch {s.batch} each = effective batch {self.effective_batch}; lr {self.lr:g}"
                 + (f" (--lr {s.lr:g} x {dd.world}, linear scaling)" if s.scale_lr and dd.world > 1
                    else " (not scaled with the number of processes; --scale-lr scales it linearly)"
                    if dd.world > 1 else ""))

    def _build_model(self) -> None:
        from ..porting.twin import WGNetTwin

        s, dd = self.s, self.dd
        torch.manual_seed(s.seed)
        self.model = model = WGNetTwin(self.cfg)
        with torch.no_grad():
            torch.nn.init.normal_(model.head.weight, std=HEAD_INIT_STD)
            torch.nn.init.zeros_(model.head.bias)
        model.to(dd.device)
        self.net = model
        if dd.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dd.local_rank] if self.device == "cuda" else None)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=s.weight_decay)
        schedule = LrSchedule(self.lr, s.min_lr * self.lr / s.lr, round(s.cosine_end * self.total_steps),
                              s.warmup_iters, s.warmup_factor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=s.amp)

    def _resume(self, resume: dict) -> None:
        self.model.load_state_dict(resume["state_dict"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        self.scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"]["torch"])
        if self.device == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
        self.step, self.best = resume["step"], resume["best"]
        self.say(f"refpose train: resuming {self.last_path} at step {self.step} (epoch "
                 f"{self.step / self.steps_per_epoch:.2f} of {self.s.epochs})")

    def _run_info(self) -> dict:
        s, dd = self.s, self.dd
        return {"settings": {**asdict(s), "device": self.device}, "config": self.cfg.to_dict(),
                "versions": _versions(), "data": self.data.summary(), "world_size": dd.world,
                "effective_batch": self.effective_batch, "lr": self.lr, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps}

    def checkpoint(self) -> dict:
        return {"format": CHECKPOINT_FORMAT,
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if self.device == "cuda" else None},
                "settings": self.s.recipe(), "world": self.dd.world, "best": self.best}

    # --- an epoch --------------------------------------------------------------------------------
    def train_epoch(self, stop) -> bool:
        """Steps to the end of the epoch (or --max-steps, or Ctrl-C); True when the epoch ended."""
        from tqdm import tqdm

        s, dd = self.s, self.dd
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        items = [(epoch, i) for i in list(self.sampler)[skip * s.batch:self.steps_per_epoch * s.batch]]
        loader = DataLoader(self.dataset, batch_size=s.batch, sampler=items, num_workers=s.workers,
                            drop_last=True, pin_memory=self.device == "cuda", worker_init_fn=_init_worker)
        self.window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "images": 0}
        self.epoch_stats = {"t": time.perf_counter(), "seen": 0, "loss_sum": 0.0, "loss_n": 0}
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{s.epochs}", unit="step",
                   disable=not dd.main or (None if s.progress is None else not s.progress), leave=False)
        try:
            for x, target, weight in loader:
                self._step(x, target, weight, bar)
                if any_rank(stop.set, dd):
                    self.stopped = "interrupted"
                    break
                if self.step >= self.max_steps or self.step % self.steps_per_epoch == 0:
                    break
        except torch.OutOfMemoryError:
            raise TrainError(f"out of GPU memory with --batch {s.batch} per device; "
                             f"try a smaller --batch (e.g. {max(1, s.batch // 2)})") from None
        except RefposeError as e:
            if isinstance(e, TrainError):
                raise
            raise type(e)(_worker_error_line(e)) from None
        finally:
            bar.close()
        return self.step % self.steps_per_epoch == 0

    def _step(self, x, target, weight, bar) -> None:
        s, dd = self.s, self.dd
        x = x.to(dd.device, non_blocking=True)
        target = target.to(dd.device, non_blocking=True)
        weight = weight.to(dd.device, non_blocking=True)
        with torch.autocast(device_type=self.device, dtype=torch.float16, enabled=s.amp):
            heatmaps = self.net(x)
        loss = keypoint_mse(heatmaps.float(), target, weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainError(f"the loss became {value} at step {self.step}; lower --lr")
        e, w = self.epoch_stats, self.window
        e["loss_sum"], e["loss_n"], e["seen"] = e["loss_sum"] + value, e["loss_n"] + 1, e["seen"] + len(x) * dd.world
        w["loss"] += value
        w["n"] += 1
        w["images"] += len(x) * dd.world
        now = time.perf_counter()
        rate = w["images"] / max(now - w["t"], 1e-9)
        bar.update()
        bar.set_postfix(loss=f"{value:.2e}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                        img_s=f"{rate:.0f}", refresh=False)
        if self.log is not None and (self.step % s.log_every == 0 or self.step == self.max_steps):
            self.log.metrics({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": w["loss"] / w["n"],
                              "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": rate})
            self.window = {"loss": 0.0, "n": 0, "t": now, "images": 0}

    # --- the end of an epoch ------------------------------------------------------------------
    def end_of_epoch(self, epoch_done: bool) -> None:
        """Rank 0: last.pt, validation (best.pt, model.safetensors) when due, the epoch's line."""
        if self.log is None:
            return
        s, e = self.s, self.epoch_stats
        elapsed = time.perf_counter() - e["t"]
        line = (f"epoch {self.step / self.steps_per_epoch:.2f}/{s.epochs}  loss {e['loss_sum'] / max(e['loss_n'], 1):.3e}  "
                f"lr {self.optimizer.param_groups[0]['lr']:.2e}  {e['seen'] / max(elapsed, 1e-9):.1f} img/s  "
                f"{elapsed:.0f} s")
        validate_now = s.val_ann is not None and epoch_done and (
            (self.step // self.steps_per_epoch) % s.val_every == 0 or self.step == self.total_steps)
        self.save_last()
        if validate_now:
            line += self._validate()
        self.say(line)
        self.log.curves()

    def save_last(self) -> None:
        save_checkpoint(self.last_path, self.checkpoint())
        self.saved_step = self.step

    def _validate(self) -> str:
        stats = self.log.validate(self.last_path, self.step / self.steps_per_epoch)
        best = self.best
        if stats["AP"] is not None and (not best or stats["AP"] > best["AP"]):
            self.best = best = {"AP": stats["AP"], "AP50": stats["AP50"], "epoch": self.step // self.steps_per_epoch,
                                "step": self.step}
            save_checkpoint(self.out / "best.pt", self.checkpoint())
            self.log.write_model(self.out / "best.pt", self.step, best)
        save_checkpoint(self.last_path, self.checkpoint())         # with `best` up to date
        return f"  val AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f} (best {best.get('AP', 0):.3f})"

    def finish(self) -> None:
        """Rank 0: last.pt if the run stopped inside an epoch, model.safetensors, run.json's outcome."""
        if self.log is None:
            return
        if self.saved_step != self.step:      # stopped inside an epoch: its end saved nothing yet
            self.save_last()
        if not self.best:
            self.log.write_model(self.last_path, self.step, self.best)
        self.log.finish(self.step, self.stopped, self.best)
        self.log.curves()
        if self.stopped == "interrupted":
            self.say(f"refpose train: stopped at step {self.step}; saved {self.last_path}; --resume continues")

