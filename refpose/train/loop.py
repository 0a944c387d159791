"""The training loop: the PyTorch twin, Adam, warm-up and cosine, MSE with target weights.

Recipe (DESIGN section 6): the paper, section 4.2 (200 epochs; lr 1e-3 decayed by a cosine to
1e-5 at epoch 170, then held) and, where it is silent, MMPose's
td-hm_hrnet-w32_8xb64-210e_coco-256x192 (Adam without weight decay, linear warm-up over 500
iterations from 0.001 x lr, `KeypointMSELoss(use_target_weight=True)`, batch 64 per device,
validation every 10 epochs, the best checkpoint by AP kept). One process, or one per device
under torchrun (DistributedDataParallel; rank 0 alone logs, validates and writes).
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
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
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import get_config, variant_of
from ..errors import RefposeError
from ..fileio import write_atomic
from . import TrainError
from ..pose.imageio import read_image
from .data import Augment, load_train_set, make_sample, sample_rng
from .settings import TrainSettings

CHECKPOINT_FORMAT = "refpose-train/1"
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


def _save(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # a damaged file fails in many ways inside the unpickler
        raise TrainError(f"{path}: not a readable checkpoint ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a refpose train checkpoint")
    return ckpt


def _worker_error_line(e: Exception) -> str:
    """The last line of an error re-raised by a DataLoader worker (it carries the traceback)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def train(s: TrainSettings) -> TrainResult:
    """Run (or continue) a training run and write its folder; see the module docstring."""
    from tqdm import tqdm

    from ..porting.twin import WGNetTwin

    device = resolve_device(s.device, s.amp)
    if s.epochs < 1 or s.batch < 1 or s.val_every < 1 or s.log_every < 1 or s.workers < 0:
        raise TrainError("--epochs, --batch, --val-every and --log-every must be positive, --workers >= 0")
    if not (0 < s.cosine_end <= 1) or s.lr <= 0 or s.min_lr < 0:
        raise TrainError("--lr must be positive, --min-lr >= 0 and the cosine end in (0, 1]")
    if (s.val_ann is None) != (s.val_images is None):
        raise TrainError("--val-ann and --val-images go together")
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)   # CPU ops are; a CUDA op that is not warns
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device == "cuda":
        torch.backends.cudnn.benchmark = True

    cfg = get_config(s.config)
    out = Path(s.out)
    last_path = out / "last.pt"
    resume = None
    if s.resume:
        if not last_path.is_file():
            raise TrainError(f"--resume: {last_path} does not exist (nothing to continue)")
        resume = _load_checkpoint(last_path)
        differ = {k: (resume["settings"].get(k), v) for k, v in s.recipe().items() if resume["settings"].get(k) != v}
        if differ:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
            raise TrainError(f"--resume: {last_path} was made with other settings ({what}); "
                             "give the same ones, or another --out for a new run")
    elif last_path.exists():
        raise TrainError(f"{out} already holds a run ({last_path}); --resume continues it, or choose another --out")

    data = load_train_set(s.train_ann, s.train_images)
    dd = init_distributed(device)
    if resume is not None and resume["world"] != dd.world:
        raise TrainError(f"--resume: {last_path} was made by {resume['world']} process(es), "
                         f"this run has {dd.world}; the batches would differ")
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if dd.main else (lambda text: None)
    for path in data.missing[:10]:
        say(f"refpose train: missing image {path}")
    if data.missing:
        say(f"refpose train: {len(data.missing)} image(s) missing, {data.missing_persons} person(s) left out"
            + (" (the first 10 above; all in run.json)" if len(data.missing) > 10 else ""))

    in_h, in_w = cfg.input_size
    hm_h, hm_w = cfg.output_size()
    dataset = PersonCrops(data.persons, (in_h, in_w), (hm_h, hm_w), s.seed,
                          Augment() if s.augment else Augment.off(), s.sigma, variant_of(cfg.name))
    sampler = DistributedSampler(dataset, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=s.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // s.batch
    if steps_per_epoch == 0:
        raise TrainError(f"{len(data.persons)} persons over {dd.world} process(es) do not fill one batch of "
                         f"{s.batch}; lower --batch")
    total_steps = s.epochs * steps_per_epoch
    effective_batch = s.batch * dd.world
    lr = s.lr * effective_batch / s.batch if s.scale_lr else s.lr
    say(f"refpose train: {cfg.name}, {len(data.persons)} persons in {data.images} images "
        f"({data.skipped_unlabelled} without labelled keypoints skipped); {dd.world} process(es) on {device}, "
        f"batch {s.batch} each = effective batch {effective_batch}; lr {lr:g}"
        + (f" (--lr {s.lr:g} x {dd.world}, linear scaling)" if s.scale_lr and dd.world > 1
           else " (not scaled with the number of processes; --scale-lr scales it linearly)" if dd.world > 1 else ""))

    torch.manual_seed(s.seed)
    model = WGNetTwin(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=HEAD_INIT_STD)
        torch.nn.init.zeros_(model.head.bias)
    model.to(dd.device)
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.local_rank] if device == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    schedule = LrSchedule(lr, s.min_lr * lr / s.lr, round(s.cosine_end * total_steps), s.warmup_iters,
                          s.warmup_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=s.amp)

    step, best = 0, {}
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
        step, best = resume["step"], resume["best"]
        say(f"refpose train: resuming {last_path} at step {step} (epoch {step / steps_per_epoch:.2f} "
            f"of {s.epochs})")

    run_info = {"settings": {**asdict(s), "device": device}, "config": cfg.to_dict(), "versions": _versions(),
                "data": data.summary(), "world_size": dd.world, "effective_batch": effective_batch,
                "lr": lr, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
    log = RunLog(out, s, cfg, data) if dd.main else None
    if log is not None:
        log.start(run_info, step)

    def checkpoint() -> dict:
        return {"format": CHECKPOINT_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if device == "cuda" else None},
                "settings": s.recipe(), "world": dd.world, "best": best}

    stopped = "finished"
    saved_step = None                     # the step last.pt holds, once this run has written it
    max_steps = total_steps if s.max_steps is None else min(s.max_steps, total_steps)
    model.train()
    with _StopFlag() as stop:
        while step < max_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            items = [(epoch, i) for i in list(sampler)[skip * s.batch:steps_per_epoch * s.batch]]
            loader = DataLoader(dataset, batch_size=s.batch, sampler=items, num_workers=s.workers,
                                drop_last=True, pin_memory=device == "cuda", worker_init_fn=_init_worker)
            window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "images": 0}
            t_epoch, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{s.epochs}", unit="step",
                       disable=not dd.main or (None if s.progress is None else not s.progress), leave=False)
            try:
                for x, target, weight in loader:
                    x = x.to(dd.device, non_blocking=True)
                    target = target.to(dd.device, non_blocking=True)
                    weight = weight.to(dd.device, non_blocking=True)
                    with torch.autocast(device_type=device, dtype=torch.float16, enabled=s.amp):
                        heatmaps = net(x)
                    loss = keypoint_mse(heatmaps.float(), target, weight)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainError(f"the loss became {value} at step {step}; lower --lr")
                    loss_sum, loss_n, seen = loss_sum + value, loss_n + 1, seen + len(x) * dd.world
                    window["loss"] += value
                    window["n"] += 1
                    window["images"] += len(x) * dd.world
                    now = time.perf_counter()
                    rate = window["images"] / max(now - window["t"], 1e-9)
                    bar.update()
                    bar.set_postfix(loss=f"{value:.2e}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{rate:.0f}", refresh=False)
                    if log is not None and (step % s.log_every == 0 or step == max_steps):
                        log.metrics({"step": step, "epoch": step / steps_per_epoch, "loss": window["loss"] / window["n"],
                                     "lr": optimizer.param_groups[0]["lr"], "img_per_s": rate})
                        window = {"loss": 0.0, "n": 0, "t": now, "images": 0}
                    if _any(stop.set, dd):
                        stopped = "interrupted"
                        break
                    if step >= max_steps or step % steps_per_epoch == 0:
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
            epoch_done = step % steps_per_epoch == 0
            if stopped == "interrupted" and not epoch_done:
                break                         # an epoch's last step still gets its summary and validation
            if log is not None:
                elapsed = time.perf_counter() - t_epoch
                line = (f"epoch {step / steps_per_epoch:.2f}/{s.epochs}  loss {loss_sum / max(loss_n, 1):.3e}  "
                        f"lr {optimizer.param_groups[0]['lr']:.2e}  {seen / max(elapsed, 1e-9):.1f} img/s  "
                        f"{elapsed:.0f} s")
                validate_now = s.val_ann is not None and epoch_done and (
                    (step // steps_per_epoch) % s.val_every == 0 or step == total_steps)
                _save(last_path, checkpoint())
                saved_step = step
                if validate_now:
                    stats = log.validate(last_path, step / steps_per_epoch)
                    if stats["AP"] is not None and (not best or stats["AP"] > best["AP"]):
                        best = {"AP": stats["AP"], "AP50": stats["AP50"], "epoch": step // steps_per_epoch, "step": step}
                        _save(out / "best.pt", checkpoint())
                        log.write_model(out / "best.pt", step, best)
                    _save(last_path, checkpoint())         # with `best` up to date
                    line += f"  val AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f} (best {best.get('AP', 0):.3f})"
                say(line)
                log.curves()
            if dd.world > 1:
                dist.barrier()
            if stopped == "interrupted":
                break
        if stopped != "interrupted" and step < total_steps:
            stopped = "max-steps"
    if log is not None:
        if saved_step != step:            # stopped inside an epoch: its end saved nothing yet
            _save(last_path, checkpoint())
        if not best:
            log.write_model(last_path, step, best)
        log.finish(step, stopped, best)
        log.curves()
        if stopped == "interrupted":
            say(f"refpose train: stopped at step {step}; saved {last_path}; --resume continues")
    if dd.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if stopped == "interrupted":
        raise KeyboardInterrupt
    return TrainResult(str(out) if dd.main else None, step, step / steps_per_epoch, stopped, best)


def _any(flag: bool, dd: Dist) -> bool:
    """True on every rank when any rank's flag is set (all ranks must stop at the same step)."""
    if dd.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dd.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class RunLog:
    """Rank 0's writing: run.json, metrics.jsonl, validation, model.safetensors, curves.png."""

    def __init__(self, out: Path, s: TrainSettings, cfg, data):
        self.out, self.s, self.cfg, self.data = out, s, cfg, data
        self.metrics_path = out / "metrics.jsonl"

    def start(self, info: dict, step: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.info = info
        write_atomic(self.out / "run.json", json.dumps(info, indent=2).encode())
        # lines written after the checkpoint a resumed run starts from are dropped: they are redone
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows

    def metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def export(self, checkpoint: Path, path: Path, extra: dict) -> None:
        """The twin's weights in a checkpoint -> a refpose weights file (`refpose export`'s code)."""
        from ..porting.twin import read_checkpoint
        from ..weights import save_weights

        tensors, cfg = read_checkpoint(checkpoint, self.cfg)
        save_weights(path, tensors, cfg, trained=True, extra=extra)

    def validate(self, checkpoint: Path, epoch: float) -> dict:
        """COCO AP of the checkpoint's weights on the validation set, run by refpose's own
        NumPy pipeline exactly as `refpose eval --images` runs (flip test, OKS-NMS)."""
        from ..data.evaluate import ModelSpec, RunOptions, evaluate_images

        weights = self.out / "val" / "weights.safetensors"
        self.export(checkpoint, weights, {"epoch": f"{epoch:g}"})
        run = evaluate_images(self.s.val_ann, self.s.val_images, self.out / "val" / "results.json",
                              boxes=self.s.val_boxes, model=ModelSpec(weights=str(weights)),
                              options=RunOptions(flip=True, restart=True, workers=max(1, self.s.workers)),
                              progress=False)
        row = {"step": int(round(epoch * self.info["steps_per_epoch"])), "epoch": epoch, "val": run.stats,
               "val_images": len(run.scored), "val_missing": len(run.missing)}
        self.metrics(row)
        return run.stats

    def write_model(self, checkpoint: Path, step: int, best: dict) -> None:
        """model.safetensors from a checkpoint, with what it was trained on in its metadata."""
        extra = {"dataset": self.data.source, "persons": str(len(self.data.persons)),
                 "epochs": str(self.s.epochs), "trained_epochs": f"{step / self.info['steps_per_epoch']:g}"}
        if best:
            extra.update({"val_dataset": str(self.s.val_ann), "val_AP": f"{best['AP']:.4f}",
                          "val_AP50": f"{best['AP50']:.4f}", "val_epoch": str(best["epoch"])})
        self.export(checkpoint, self.out / "model.safetensors", extra)

    def finish(self, step: int, stopped: str, best: dict) -> None:
        self.info.update({"finished": stopped, "step": step, "best": best})
        write_atomic(self.out / "run.json", json.dumps(self.info, indent=2).encode())

    def curves(self) -> None:
        """curves.png: loss and lr against epochs, and validation AP; skipped without matplotlib."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if not getattr(self, "_noted", False):
                print("refpose train: matplotlib is not installed; no curves.png "
                      "(pip install 'refpose[plot]')", file=sys.stderr)
                self._noted = True
            return
        rows = self.read_metrics()
        train_rows = [r for r in rows if "loss" in r]
        val_rows = [r for r in rows if "val" in r and r["val"].get("AP") is not None]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        if train_rows:
            ep = [r["epoch"] for r in train_rows]
            axes[0].semilogy(ep, [r["loss"] for r in train_rows])
            axes[1].semilogy(ep, [r["lr"] for r in train_rows])
        if val_rows:
            ep = [r["epoch"] for r in val_rows]
            axes[2].plot(ep, [r["val"]["AP"] for r in val_rows], "o-", label="AP")
            axes[2].plot(ep, [r["val"]["AP50"] for r in val_rows], "s--", label="AP50")
            axes[2].legend()
        for ax, title in zip(axes, ("training loss (MSE, target-weighted)", "learning rate", "validation (COCO OKS)")):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.suptitle(f"refpose train --config {self.cfg.name}", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        write_atomic(self.out / "curves.png", buffer.getvalue())
