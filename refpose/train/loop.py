"""The training loop: the PyTorch twin, Adam, warm-up and cosine, MSE with target weights.

Recipe (DESIGN section 6): the paper, section 4.2 (200 epochs; lr 1e-3 decayed by a cosine to
1e-5 at epoch 170, then held) and, where it is silent, MMPose's
td-hm_hrnet-w32_8xb64-210e_coco-256x192 (Adam without weight decay, linear warm-up over 500
iterations from 0.001 x lr, `KeypointMSELoss(use_target_weight=True)`, batch 64 per device,
validation every 10 epochs, the best checkpoint by AP kept). One process, or one per device
under torchrun (DistributedDataParallel; rank 0 alone logs and writes, every rank validates
its share of the images).

`train` reads as the run goes: check the settings, join the process group, let rank 0 open the
run folder and index the data for everyone, check the validation set, build the run, then
epochs until done. `Run` holds what changes as it goes (the step, the best validation) and does
one epoch, one step, and the end of an epoch. No step waits for the device: the loss stays on
it and the processes exchange `[loss sum, steps, non-finite steps]` every --log-every steps.
"""
from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import torch                       # after `import refpose`, which asked OpenMP not to spin (refpose.threads)
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..config import get_config, variant_of
from ..errors import RefposeError
from . import TrainError, require_torch
from .checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from .data import Augment, load_train_set
from .distributed import Dist, StopVote, close, fail_together, init_distributed, on_main, resolve_device, together
from .loader import EpochItems, PersonCrops, close_loader, make_loader, worker_error_line
from .faults import Faults
from .runlog import RunLog
from .settings import TrainSettings, default_workers
from .validate import Validation

HEAD_INIT_STD = 0.001      # MMPose HeatmapHead init: Normal(std=0.001) for the final conv, bias 0
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MIN_LOSS_SCALE = 2.0 ** -14  # GradScaler halves its scale (from 2^16) per overflow: 30 in a row, no scale helps
DATA_WAIT_WARN = 0.2       # warn when the device waited for data this fraction of an epoch


def train(s: TrainSettings) -> "TrainResult":
    """Run (or continue) a training run and write its folder; see the module docstring.

    With several processes, a failure in any of them ends every one within seconds with the
    same line (`distributed.Abort`), rather than leaving the others waiting in a collective."""
    require_torch()
    s.check()
    device = resolve_device(s.device, s.amp)
    s = replace(s, workers=default_workers() if s.workers is None else s.workers)
    dd = init_distributed(device)
    faults = Faults(dd.rank)
    configure_torch(s, device)
    if s.amp == "fp16" and device == "cpu" and dd.main:
        print("refpose train: warning: --amp fp16 on the CPU is slow (PyTorch emulates much of it); "
              "--amp bf16 is the CPU's mixed precision", file=sys.stderr, flush=True)
    try:
        result = _train(s, device, dd, faults)
    except BaseException as e:
        if dd.world == 1:
            raise
        fail_together(dd, e)
    close(dd)
    if result.stopped == "interrupted":
        raise KeyboardInterrupt
    return result


def _train(s: TrainSettings, device: str, dd: Dist, faults: Faults) -> "TrainResult":
    cfg = get_config(s.config)
    model = build_model(cfg, s.seed, dd.device)
    resume, data = on_main(dd, open_run, s, model)
    validation = together(dd, Validation, s.val_ann, s.val_images, s.val_boxes) if s.val_ann else None
    run = Run(s, cfg, dd, device, data, model, validation, faults)
    try:
        return _epochs(run, resume)
    finally:
        run.close()


def _epochs(run: "Run", resume: dict | None) -> "TrainResult":
    dd = run.dd
    if resume is not None:
        run.resume(resume)
    on_main(dd, run.start_log)
    with StopSignals() as stop:
        vote = StopVote(dd, stop)
        if run.validation_due() and run.validated_step != run.step:
            run.end_of_epoch(validate_only=True)   # a resumed run whose last validation did not happen
        while run.step < run.max_steps:
            epoch_done = run.train_epoch(vote)
            if run.stopped == "interrupted" and not epoch_done:
                break                         # an epoch's last step still gets its summary and validation
            run.end_of_epoch()
            if run.stopped == "interrupted":
                break
        if run.stopped != "interrupted" and run.step < run.total_steps:
            run.stopped = "max-steps"
    on_main(dd, run.finish)
    return TrainResult(str(run.out) if dd.main else None, run.step, run.step / run.steps_per_epoch, run.stopped,
                       run.best)


def configure_torch(s: TrainSettings, device: str) -> None:
    """Threads, determinism and float32 matmul precision, process-wide."""
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)   # CPU ops are; a CUDA op that is not warns
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")   # TF32 matmuls on Ampere and later (off by default)


def build_model(cfg, seed: int, device: torch.device) -> torch.nn.Module:
    """The twin with seeded weights, the head as MMPose initialises it; the same on every rank."""
    from ..porting.twin import WGNetTwin

    torch.manual_seed(seed)
    model = WGNetTwin(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=HEAD_INIT_STD)
        torch.nn.init.zeros_(model.head.bias)
    return model.to(device)


def open_run(s: TrainSettings, model) -> tuple:
    """Rank 0: the checkpoint to continue (--resume) or None, and the training set, indexed once
    for every rank (see `open_run_folder`, `load_train_set`)."""
    resume = open_run_folder(s, model)
    return resume, load_train_set(s.train_ann, s.train_images)


def open_run_folder(s: TrainSettings, model) -> dict | None:
    """The checkpoint to continue (--resume, checked whole), or None for a new run in a folder that
    is new or empty; TrainError when the folder does not fit the request. Reads only."""
    from ..fileio import path_problem

    out = Path(s.out)
    last_path = out / "last.pt"
    problem = path_problem(out, folder=True) if os.path.lexists(out) else None
    if problem:
        raise TrainError(f"--out {out}: {'is a file, not a run folder' if problem == 'not a folder' else problem}")
    if not s.resume:
        if last_path.exists():
            raise TrainError(f"{out} already holds a run ({last_path}); --resume continues it, or choose another --out")
        if out.is_dir() and any(out.iterdir()):
            raise TrainError(f"--out {out} is not empty and holds no run to continue (no last.pt); "
                             "choose a new or empty folder: a run never replaces files it did not write")
        return None
    if not last_path.exists():
        raise TrainError(f"--resume: {last_path} does not exist (nothing to continue)")
    return read_checkpoint(last_path, model, s.recipe())


# --- the pieces of a run ----------------------------------------------------------------------------
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


@dataclass
class TrainResult:
    """What a run did: where it wrote, how far it went, and its best validation."""
    out: str | None                       # None on ranks other than 0
    step: int
    epoch: float
    stopped: str                          # "finished", "max-steps" or "interrupted"
    best: dict = field(default_factory=dict)


class StopSignals:
    """Set by Ctrl-C or SIGTERM (a scheduler's preemption, which torchrun forwards): the run stops
    after an agreed step and saves last.pt. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.set = False
        self.previous = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.set:                  # a second signal: stop now
                raise KeyboardInterrupt
            self.set = True
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, handler)
        except ValueError:                # not the main thread: signals keep their meaning
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


def _versions() -> dict:
    import cv2

    from .. import __version__
    return {"refpose": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "python": platform.python_version()}


class LossWindow:
    """The loss of the steps since the last exchange, kept on the device: [sum of finite losses,
    finite steps, non-finite steps] and the first non-finite step. Adding a step never waits."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        self.first_bad = torch.full((), float("inf"), device=self.device, dtype=torch.float64)
        self.steps, self.images, self.t = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, step: int, images: int) -> None:
        loss = loss.detach().double()
        bad = ~torch.isfinite(loss)
        self.sums += torch.stack([torch.where(bad, 0.0, loss), (~bad).double(), bad.double()])
        self.first_bad = torch.where(bad, torch.minimum(self.first_bad, torch.full_like(self.first_bad, step)),
                                     self.first_bad)
        self.steps += 1
        self.images += images


# --- the run -------------------------------------------------------------------------------------
class Run:
    """One training run in progress on this rank: the model, its optimiser and schedule, the step,
    the best validation, and (rank 0) the run folder's writer."""

    def __init__(self, s: TrainSettings, cfg, dd: Dist, device: str, data, model, validation, faults: Faults):
        self.s, self.cfg, self.dd, self.device, self.data = s, cfg, dd, device, data
        self.model, self.validation, self.faults = model, validation, faults
        self.out = Path(s.out)
        self.last_path = self.out / "last.pt"
        self.say = (lambda text: print(text, file=sys.stderr, flush=True)) if dd.main else (lambda text: None)
        self.amp_dtype = AMP_DTYPES.get(s.amp)
        self._report_left_out()
        self._build_data()
        self._build_optimizer()
        self.step, self.best, self.validated_step = 0, {}, None
        self.stopped = "finished"
        self.saved_step = None                # the step last.pt holds, once this run has written it
        self.max_steps = self.total_steps if s.max_steps is None else min(s.max_steps, self.total_steps)
        self.log = RunLog(self.out, s, cfg, data) if dd.main else None
        self.window = LossWindow(dd.device)

    # --- setup ---------------------------------------------------------------------------------
    def _report_left_out(self) -> None:
        data = self.data
        for entry in data.missing[:10]:
            self.say(f"refpose train: image left out: {entry}")
        if data.missing:
            self.say(f"refpose train: {len(data.missing)} image(s) missing or unreadable, {data.missing_persons} "
                     "person(s) left out" + (" (the first 10 above; all in run.json)" if len(data.missing) > 10 else ""))

    def _build_data(self) -> None:
        s, dd, cfg, data = self.s, self.dd, self.cfg, self.data
        self.dataset = PersonCrops(data.persons, cfg.input_size, cfg.output_size(), s.seed,
                                   Augment() if s.augment else Augment.off(), s.sigma, variant_of(cfg.name))
        sampler = DistributedSampler(self.dataset, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                                     seed=s.seed, drop_last=True)
        self.steps_per_epoch = len(sampler) // s.batch
        if self.steps_per_epoch == 0:
            raise TrainError(f"{len(data.persons)} persons over {dd.world} process(es) do not fill one batch of "
                             f"{s.batch}; lower --batch")
        self.items = EpochItems(sampler, s.batch)
        self.loader = make_loader(self.dataset, self.items, s.batch, s.workers, pin_memory=self.device == "cuda")
        self.total_steps = s.epochs * self.steps_per_epoch
        self.effective_batch = s.batch * dd.world
        self.lr = s.lr * self.effective_batch / s.batch if s.scale_lr else s.lr
        self.say(f"refpose train: {cfg.name}, {len(data.persons)} persons in {data.images} images "
                 f"({data.skipped_unlabelled} without labelled keypoints skipped); {dd.world} process(es) on "
                 f"{self.device}, batch {s.batch} each = effective batch {self.effective_batch}, "
                 f"{s.workers} loader process(es) each; lr {self.lr:g}"
                 + (f" (--lr {s.lr:g} x {dd.world}, linear scaling)" if s.scale_lr and dd.world > 1
                    else " (not scaled with the number of processes; --scale-lr scales it linearly)"
                    if dd.world > 1 else ""))

    def _build_optimizer(self) -> None:
        s, dd = self.s, self.dd
        self.net = self.model
        if dd.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dd.local_rank] if self.device == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=s.weight_decay)
        schedule = LrSchedule(self.lr, s.min_lr * self.lr / s.lr, round(s.cosine_end * self.total_steps),
                              s.warmup_iters, s.warmup_factor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        # GradScaler skips the steps whose float16 gradients overflow; bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(self.device, enabled=s.amp == "fp16")

    def resume(self, ckpt: dict) -> None:
        """The state of a checkpoint rank 0 read and checked (`open_run_folder`), on every rank."""
        if ckpt["world"] != self.dd.world:
            raise TrainError(f"--resume: {self.last_path} was made by {ckpt['world']} process(es), "
                             f"this run has {self.dd.world}; the batches would differ")
        if ckpt["step"] > self.total_steps:
            raise TrainError(f"--resume: {self.last_path} is at step {ckpt['step']}, beyond this run's "
                             f"{self.total_steps} steps")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise TrainError(f"--resume: {self.last_path}: damaged or not this run's checkpoint "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        if self.device == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        self.step, self.best = ckpt["step"], ckpt["best"]
        self.validated_step = ckpt.get("validated_step")
        self.saved_step = self.step
        self.say(f"refpose train: resuming {self.last_path} at step {self.step} (epoch "
                 f"{self.step / self.steps_per_epoch:.2f} of {self.s.epochs})")

    def start_log(self) -> None:
        """Rank 0: run.json, and metrics.jsonl cut back to the step the run starts from."""
        s, dd = self.s, self.dd
        info = {"settings": {**asdict(s), "device": self.device}, "config": self.cfg.to_dict(),
                "versions": _versions(), "data": self.data.summary(), "world_size": dd.world,
                "effective_batch": self.effective_batch, "lr": self.lr, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps}
        self.log.start(info, self.step)

    def checkpoint(self) -> dict:
        return {"format": CHECKPOINT_FORMAT,
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if self.device == "cuda" else None},
                "settings": self.s.recipe(), "world": self.dd.world, "best": self.best,
                "validated_step": self.validated_step}

    def validation_due(self) -> bool:
        """At an epoch's end: every --val-every epochs and after the last."""
        epochs, rest = divmod(self.step, self.steps_per_epoch)
        return (self.validation is not None and self.step > 0 and rest == 0
                and (epochs % self.s.val_every == 0 or self.step == self.total_steps))

    # --- an epoch --------------------------------------------------------------------------------
    def train_epoch(self, vote: StopVote) -> bool:
        """Steps to the end of the epoch (or --max-steps, or an agreed stop); True when the epoch ended."""
        from tqdm import tqdm

        s = self.s
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        self.items.start(epoch, skip, self.steps_per_epoch)
        self.epoch = {"t": time.perf_counter(), "wait": 0.0, "loss_sum": 0.0, "loss_n": 0, "images": 0,
                      "bad_samples": 0, "first_bad": None}
        self.window.reset()
        self.bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{s.epochs}", unit="step",
                        disable=not self.dd.main or (None if s.progress is None else not s.progress), leave=False)
        try:
            batches = iter(self.loader)
            while True:
                t = time.perf_counter()
                batch = next(batches, None)
                self.epoch["wait"] += time.perf_counter() - t
                if batch is None:
                    break
                self._step(*batch)
                if self.step % s.log_every == 0 or self.step == self.max_steps:
                    self._exchange()
                if vote.poll():
                    self.stopped = "interrupted"
                    break
                if self.step >= self.max_steps or self.step % self.steps_per_epoch == 0:
                    break
            if vote.settle():
                self.stopped = "interrupted"
            if self.window.steps:
                self._exchange()
        except torch.OutOfMemoryError:
            raise TrainError(f"out of GPU memory at step {self.step + 1} with --batch {s.batch} per device; "
                             f"try a smaller --batch (e.g. {max(1, s.batch // 2)})") from None
        except RefposeError as e:
            if isinstance(e, TrainError):
                raise
            raise type(e)(worker_error_line(e)) from None
        finally:
            self.bar.close()
        return self.step % self.steps_per_epoch == 0

    def _step(self, x, target, weight, problems) -> None:
        dd = self.dd
        self._count_bad_samples(problems)
        x = x.to(dd.device, non_blocking=True)
        target = target.to(dd.device, non_blocking=True)
        weight = weight.to(dd.device, non_blocking=True)
        with torch.autocast(device_type=self.device, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            heatmaps = self.net(x)
        loss = self.faults.loss(self.step + 1, keypoint_mse(heatmaps.float(), target, weight))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(self.faults.to_backward(self.step + 1, loss)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.window.add(loss, self.step, len(x) * dd.world)
        self.bar.update()

    def _count_bad_samples(self, problems) -> None:
        bad = [p for p in problems if p]
        if bad:
            self.epoch["bad_samples"] += len(bad)
            self.epoch["first_bad"] = self.epoch["first_bad"] or bad[0]

    def _exchange(self) -> None:
        """Every rank: the loss window summed over the ranks (one wait for the device); stop on a
        non-finite loss (float16 AMP: GradScaler skips those steps, unless it cannot recover);
        rank 0 logs the mean."""
        w, dd = self.window, self.dd
        sums = w.sums.clone()
        if dd.world > 1:
            dist.all_reduce(sums)
        loss_sum, finite, nonfinite = sums.tolist()
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
               "loss": loss_sum / finite if finite else None, "lr": self.optimizer.param_groups[0]["lr"],
               "img_per_s": w.images / max(time.perf_counter() - w.t, 1e-9)}
        if nonfinite:
            first = w.first_bad.clone()
            if dd.world > 1:
                dist.all_reduce(first, op=dist.ReduceOp.MIN)
            if self.s.amp != "fp16":
                raise TrainError(f"the loss became NaN or infinite at step {int(first.item())}; lower --lr")
            row["nonfinite_losses"] = int(nonfinite)
        if self.scaler.is_enabled():
            row["amp_scale"] = self.scaler.get_scale()
            if row["amp_scale"] < MIN_LOSS_SCALE:
                raise TrainError(f"the float16 loss scale fell to {row['amp_scale']:g} at step {self.step}: the "
                                 "gradients overflow at any scale; lower --lr, or use --amp bf16")
        self.epoch["loss_sum"] += loss_sum
        self.epoch["loss_n"] += finite
        self.epoch["images"] += w.images
        if self.log is not None and (self.step % self.s.log_every == 0 or self.step == self.max_steps):
            self.log.metrics(row)
        if row["loss"] is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.2e}", lr=f"{row['lr']:.2e}", img_s=f"{row['img_per_s']:.0f}",
                                 refresh=False)
        w.reset()

    # --- the end of an epoch ------------------------------------------------------------------
    def end_of_epoch(self, validate_only: bool = False) -> None:
        """Every rank: the epoch's figures summed over the ranks; rank 0 saves last.pt and logs;
        then validation when due (every rank its share), and rank 0 keeps the best."""
        summary = None if validate_only else self._epoch_summary()
        if summary is not None:
            on_main(self.dd, self._write_epoch, summary)
        if self.validation_due() and self.validated_step != self.step:
            result = self.validation.run(self.model, self.dd, self.out / "val" / "results.json")
            self.validated_step = self.step
            on_main(self.dd, self._write_validation, result)

    def _epoch_summary(self) -> dict:
        e = self.epoch
        elapsed = time.perf_counter() - e["t"]
        figures = torch.tensor([e["wait"], float(e["bad_samples"]), elapsed], dtype=torch.float64)
        if self.dd.world > 1:
            dist.all_reduce(figures, group=self.dd.control)
        wait, bad, elapsed_sum = figures.tolist()
        wait, elapsed = wait / self.dd.world, elapsed_sum / self.dd.world
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                "epoch_loss": e["loss_sum"] / e["loss_n"] if e["loss_n"] else None,
                "crops_per_s": e["images"] / max(elapsed, 1e-9), "epoch_s": elapsed,
                "data_wait_s": wait, "data_wait_fraction": wait / max(elapsed, 1e-9),
                "skipped_samples": int(bad), "first_skipped": e["first_bad"]}

    def _write_epoch(self, summary: dict) -> None:
        """Rank 0: last.pt, the epoch's row and line, warnings about starved devices and bad images."""
        s = self.s
        self.save_last()
        first_skipped = summary.pop("first_skipped")
        self.log.metrics(summary)
        loss = f"{summary['epoch_loss']:.3e}" if summary["epoch_loss"] is not None else "n/a"
        self.say(f"epoch {summary['epoch']:.2f}/{s.epochs}  loss {loss}  lr {self.optimizer.param_groups[0]['lr']:.2e}  "
                 f"{summary['crops_per_s']:.1f} crops/s  {summary['epoch_s']:.0f} s  "
                 f"data wait {100 * summary['data_wait_fraction']:.0f}%")
        if summary["data_wait_fraction"] > DATA_WAIT_WARN and summary["epoch_s"] > 10:
            self.say(f"refpose train: warning: the device waited for data {100 * summary['data_wait_fraction']:.0f}% "
                     f"of the epoch with --workers {s.workers}; more loader processes (this machine has "
                     f"{os.cpu_count()} cores for {self.dd.local_world} training process(es)) or faster storage "
                     "would keep it busy")
        if summary["skipped_samples"]:
            self.say(f"refpose train: warning: {summary['skipped_samples']} sample(s) skipped this epoch: their "
                     f"image could not be decoded" + (f" (first: {first_skipped})" if first_skipped else ""))
        self.log.curves()

    def _write_validation(self, result) -> None:
        """Rank 0: the validation's row, best.pt and model.safetensors when it is the best, last.pt."""
        stats = result.stats
        self.log.validation(self.step, self.step / self.steps_per_epoch, result)
        if stats["AP"] is not None and (not self.best or stats["AP"] > self.best["AP"]):
            self.best = {"AP": stats["AP"], "AP50": stats["AP50"], "epoch": self.step // self.steps_per_epoch,
                         "step": self.step}
            self.faults.writing(self.step)
            save_checkpoint(self.out / "best.pt", self.checkpoint())
            self.log.write_model(self.out / "best.pt", self.step, self.best)
        self.save_last()                                        # with `best` and the validation recorded
        ap = lambda v: "n/a" if v is None else f"{v:.3f}"       # noqa: E731  (undefined: no person scored)
        self.say(f"validation at epoch {self.step / self.steps_per_epoch:g}: AP {ap(stats['AP'])} "
                 f"AP50 {ap(stats['AP50'])} on {result.images} images (best {ap(self.best.get('AP'))})")
        self.log.curves()

    def close(self) -> None:
        close_loader(self.loader)

    def save_last(self) -> None:
        self.faults.writing(self.step)
        save_checkpoint(self.last_path, self.checkpoint())
        self.saved_step = self.step

    def finish(self) -> None:
        """Rank 0: last.pt if the run stopped inside an epoch, model.safetensors, run.json's outcome."""
        if self.saved_step != self.step:      # stopped inside an epoch: its end saved nothing yet
            self.save_last()
        if not self.best:
            self.log.write_model(self.last_path, self.step, self.best)
        self.log.finish(self.step, self.stopped, self.best)
        self.log.curves()
        if self.stopped == "interrupted":
            self.say(f"refpose train: stopped at step {self.step}; saved {self.last_path}; --resume continues")
