"""`refpose eval --images --ray`: the evaluation's jobs run by a pool of Ray actors.

`refpose.data.evaluate.evaluate_images` keeps what it does locally (jobs, boxes, the progress
file that makes a run resumable, scoring with pycocotools on the driver) and takes its results
from `RayJobRunner` instead of its own process pool. Each actor runs the evaluation's Predictor,
so the records, and the AP, are those of a local run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

from ..errors import RefposeError
from .session import CONNECT_TIMEOUT, plan_pool, ray_session


class RayJobRunner:
    """A `runner` for `evaluate_images`: (jobs, spec, flip, workers) -> (image id, records, problem) per job."""

    def __init__(self, ray, workers: tuple[int, int] | None, threads: int):
        self.ray, self.workers, self.threads = ray, workers, threads
        self.pools = []
        plan_pool(ray, workers, threads, 1)          # a pool the cluster cannot hold is refused now

    def __call__(self, jobs, spec, flip: bool, workers=None):
        from ..pose.driver import IMAGES_PER_FORWARD
        from ..pretrained import default_model
        from .actors import EvalActor, ModelSource

        if not jobs:
            return
        source = ModelSource.of(default_model(spec.weights, spec.config, spec.dtype))
        pool = plan_pool(self.ray, self.workers, self.threads, math.ceil(len(jobs) / IMAGES_PER_FORWARD))
        self.pools.append(pool)
        items = [{"item": json.dumps({"image_id": job.image_id, "path": os.path.abspath(job.path),
                                      "boxes": job.boxes.tolist(), "box_scores": job.box_scores.tolist()})}
                 for job in jobs]
        ds = self.ray.data.from_items(items).map_batches(
            EvalActor, fn_constructor_kwargs=dict(model=source, flip=flip, threads=pool.threads),
            batch_size=IMAGES_PER_FORWARD, batch_format="numpy", num_cpus=pool.threads,
            compute=self.ray.data.ActorPoolStrategy(
                min_size=pool.min_size, max_size=pool.max_size, max_tasks_in_flight_per_actor=1))
        seen = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["result"]:
                row = json.loads(text)
                if row["fatal"] is not None:
                    raise RefposeError(row["fatal"])
                if row["image_id"] in seen:              # a retried batch's twin
                    continue
                seen.add(row["image_id"])
                yield row["image_id"], row["records"], row["problem"]


@contextlib.contextmanager
def ray_runner(address: str, workers: tuple[int, int] | None, threads: int, timeout: float = CONNECT_TIMEOUT):
    """A RayJobRunner on the cluster at `address`, for the block."""
    with ray_session(address, timeout) as ray:
        yield RayJobRunner(ray, workers, threads)
