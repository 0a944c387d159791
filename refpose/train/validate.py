"""Validation during training: COCO AP of the model being trained, computed by every rank at once.

The validation set is opened and checked when the run starts, on every rank. At a validation,
each rank runs its share of the images (every world-th, from its rank on) through refpose's own
evaluation pipeline (`refpose.data.evaluate.Predictor`, the image driver: flip test, OKS-NMS)
with the twin on its own device; rank 0 gathers the records and scores them with pycocotools,
as `refpose eval --images` does. Ranks hold the same weights (DDP) and, after rank 0's BatchNorm
statistics are sent to all, the same statistics, so the split does not change the figures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..data.coco import coco_eval, load_annotations, load_results
from ..data.evaluate import Predictor, check_image_folder, make_jobs
from ..errors import DataError
from ..fileio import write_atomic
from .distributed import Dist, on_main


class TwinModel:
    """The twin being trained, as the image driver takes a model: NCHW float32 arrays in,
    heatmaps out, in eval mode, on the run's device."""

    dtype = np.float32
    source = "the model being trained"

    def __init__(self, twin: torch.nn.Module, device: torch.device):
        self.twin, self.device, self.config = twin, device, twin.config

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return self.twin(x).float().cpu().numpy()


@dataclass
class ValResult:
    stats: dict
    images: int                                   # images scored
    missing: list = field(default_factory=list)   # (path, problem)


class Validation:
    """The validation set of a run, checked when built (on every rank, at the start of the run)."""

    def __init__(self, ann: str, images: str, boxes: str | None):
        self.gt = load_annotations(ann)
        check_image_folder(images)
        self.jobs, self.boxes = make_jobs(self.gt, images, boxes, None)

    def run(self, model: torch.nn.Module, dd: Dist, results_path) -> ValResult:
        """The figures of `model` (the bare twin, not its DDP wrapper), on every rank."""
        if dd.world > 1:
            for buffer in model.buffers():            # rank 0's BatchNorm statistics everywhere
                dist.broadcast(buffer, 0)
        was_training = model.training
        model.eval()
        try:
            predictor = Predictor(flip=True, model=TwinModel(model, dd.device))
            mine = list(predictor.run(self.jobs[dd.rank::dd.world]))
        finally:
            model.train(was_training)
        parts = [mine]
        if dd.world > 1:
            parts = [None] * dd.world if dd.main else None
            dist.gather_object(mine, parts, dst=0, group=dd.control)
        return on_main(dd, self._score, parts, results_path)

    def _score(self, parts: list, results_path) -> ValResult:
        done, missing = {}, []
        paths = {job.image_id: job.path for job in self.jobs}
        for image_id, records, problem in (r for part in parts for r in part):
            if problem is None:
                done[image_id] = records
            else:
                missing.append((paths[image_id], problem))
        if not done:
            first = sorted(missing)[0] if missing else ("", "no images")
            raise DataError(f"validation: none of the {len(self.jobs)} images of {self.gt.source} could be read "
                            f"(first: {first[0]}: {first[1]})")
        scored = sorted(done)
        records = [r for image_id in scored for r in done[image_id]]
        write_atomic(results_path, json.dumps(records, allow_nan=False).encode())
        stats = coco_eval(self.gt, load_results(records, self.gt) if records else [], image_ids=scored)
        return ValResult(stats, len(scored), sorted(missing))
