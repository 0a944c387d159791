"""The training loader: PyTorch's Dataset and sampler over `refpose.train.data`'s samples, and
the DataLoader whose worker processes make them, across epochs."""
from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import ImageError
from ..pose.imageio import read_image
from .data import Augment, make_sample, sample_rng


def make_loader(dataset: "PersonCrops", items: "EpochItems", batch: int, workers: int, pin_memory: bool) -> DataLoader:
    """Batches of `batch` crops made by `workers` processes (0: in this process) that live across
    epochs (`persistent_workers`), each epoch's items taken from `items`."""
    return DataLoader(dataset, batch_size=batch, sampler=items, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, worker_init_fn=_init_worker, persistent_workers=workers > 0)


def close_loader(loader: DataLoader) -> None:
    """End the loader's processes. They ignore SIGTERM (torchrun signals the whole process group,
    and a stopping run still needs its batch in flight), so the exit of Python, which ends its
    children with SIGTERM, would wait for them forever."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


class PersonCrops(Dataset):
    """Training samples: item (epoch, index) is person `index` seen with the random stream
    of that epoch, so a sample does not depend on the worker or rank that makes it.

    An image that cannot be decoded (damaged after the set was indexed) gives an all-zero sample
    with zero target weights, which adds nothing to the loss, and its problem as the fourth
    element; the loop counts and reports them."""

    def __init__(self, persons, input_size, heatmap_size, seed: int, aug: Augment, sigma: float, variant):
        self.persons, self.input_size, self.heatmap_size = persons, input_size, heatmap_size
        self.seed, self.aug, self.sigma, self.variant = seed, aug, sigma, variant

    def __len__(self) -> int:
        return len(self.persons)

    def __getitem__(self, item):
        epoch, index = item
        person = self.persons[index]
        try:
            image = read_image(person.image)
        except ImageError as e:
            K = len(person.keypoints)
            return (torch.zeros(3, *self.input_size), torch.zeros(K, *self.heatmap_size), torch.zeros(K), str(e))
        x, heatmaps, weights = make_sample(image, person, self.input_size, self.heatmap_size,
                                           sample_rng(self.seed, epoch, index), self.aug, self.sigma,
                                           mean=self.variant.mean, std=self.variant.std)
        return torch.from_numpy(x), torch.from_numpy(heatmaps), torch.from_numpy(weights), ""


class EpochItems(Sampler):
    """This rank's (epoch, index) items of one epoch from a given batch on; the loader's workers
    live across epochs (`persistent_workers`) and take the items of the epoch set last."""

    def __init__(self, sampler: DistributedSampler, batch: int):
        self.sampler, self.batch, self.items = sampler, batch, []

    def start(self, epoch: int, skip_batches: int, batches: int) -> None:
        self.sampler.set_epoch(epoch)
        self.items = [(epoch, i) for i in list(self.sampler)[skip_batches * self.batch:batches * self.batch]]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _init_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group and torchrun may signal it too: the main process stops
    # the run, the workers keep serving the batch in flight instead of dying under it (they end
    # with the main process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # OpenCV's own thread pool in a forked worker competes with the training threads
    # (MMPose `setup_multi_processes` does the same)
    import cv2
    cv2.setNumThreads(0)


def worker_error_line(e: Exception) -> str:
    """The last line of an error re-raised by a DataLoader worker (it carries the traceback)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
