"""Rank 0's writing during a run: run.json, metrics.jsonl, model.safetensors, curves.png.

metrics.jsonl has one JSON object a line: `loss`, `lr`, `img_per_s` every --log-every steps (the
loss is the mean over every process's steps), an epoch summary with the time the device waited for
data (`data_wait_s`, `data_wait_fraction`), and the ten COCO figures at each validation (`val`).
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

from ..fileio import open_append, write_atomic
from .settings import TrainSettings


class RunLog:
    """Rank 0's writing: run.json, metrics.jsonl, model.safetensors, curves.png."""

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
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
        return rows

    def metrics(self, row: dict) -> None:
        with open_append(self.metrics_path) as f:     # a line torn by a crash is cut off first
            f.write(json.dumps(row) + "\n")

    def export(self, checkpoint: Path, path: Path, extra: dict, trained: bool = True) -> None:
        """The twin's weights in a checkpoint -> a refpose weights file (`refpose export`'s code)."""
        from ..porting.twin import read_checkpoint
        from ..weights import save_weights

        tensors, cfg = read_checkpoint(checkpoint, self.cfg)
        save_weights(path, tensors, cfg, trained=trained, extra=extra)

    def validation(self, step: int, epoch: float, result) -> None:
        self.metrics({"step": step, "epoch": epoch, "val": result.stats, "val_images": result.images,
                      "val_missing": len(result.missing)})

    def write_model(self, checkpoint: Path, step: int, best: dict) -> None:
        """model.safetensors from a checkpoint, with what it was trained on in its metadata;
        `trained: false` when the run has not made a single step."""
        extra = {"dataset": self.data.source, "persons": str(len(self.data.persons)),
                 "epochs": str(self.s.epochs), "trained_epochs": f"{step / self.info['steps_per_epoch']:g}"}
        if best:
            extra.update({"val_dataset": str(self.s.val_ann), "val_AP": f"{best['AP']:.4f}",
                          "val_AP50": f"{best['AP50']:.4f}", "val_epoch": str(best["epoch"])})
        self.export(checkpoint, self.out / "model.safetensors", extra, trained=step > 0)

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
