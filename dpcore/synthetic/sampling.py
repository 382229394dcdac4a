"""Which real images a method uses: its initial synthetic images, and its random real batches.

* :func:`initial_images` - ``ipc`` random real images of every class (the common start of DM, GM,
  MTT and the random subset), drawn on the CPU from a generator seeded by the method's seed.
* :class:`ClassSampler` - random real batches of every class, drawn on the device by a device
  generator from per-class index tensors built once (no host work per draw).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.data.dataset import Dataset


def class_sorted_index(y: Tensor, num_classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random order of the train indices grouped by class (CPU).

    Returns (order, starts, counts): ``order[starts[c] : starts[c] + counts[c]]`` is a random
    permutation of the indices of class ``c`` (seeded by ``gen``).
    """
    y = y.cpu()
    keys = torch.rand(y.shape[0], generator=gen, dtype=torch.float64) + y.to(torch.float64) * 2.0
    order = torch.argsort(keys)
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def take_per_class(order: Tensor, starts: Tensor, take: Tensor, first: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``order[starts[c] + first + j]`` for j < take[c], class-major; and their classes."""
    classes = torch.repeat_interleave(torch.arange(take.shape[0]), take)
    offsets = torch.cumsum(take, 0) - take
    pos = torch.arange(int(take.sum())) - torch.repeat_interleave(offsets, take)
    return order[starts[classes] + first + pos], classes


def initial_images(dataset: "Dataset", ipc: int, seed: int,
                   device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
    """``ipc`` random real images of every class, class-major: (images, labels, indices).

    ``images`` are the prepared (model-input) float32 images on ``device``, a fresh tensor;
    ``labels`` (int64) and ``indices`` (into the train split) are on the CPU. Seeded by ``seed``
    alone, so every method given the same seed starts from the same images.
    """
    gen = torch.Generator().manual_seed(int(seed))
    order, starts, _ = class_sorted_index(dataset.y_train, dataset.num_classes, gen)
    indices, labels = take_per_class(order, starts, torch.full((dataset.num_classes,), ipc, dtype=torch.long))
    x = dataset.prepare(dataset.x_train[indices.to(dataset.x_train.device)])
    images = x.to(device=device, dtype=torch.float32, copy=True)
    return images, labels.to(torch.int64), indices


class ClassSampler:
    """Random real batches with ``take[c]`` distinct images of every class ``c``, drawn on the device.

    Built once from the train labels: the indices of each class as one row of a padded
    [classes, largest class] tensor on ``device``. :meth:`draw` gives every index a device random
    number (padding a larger one) and keeps the ``take[c]`` smallest of every row: a uniform random
    subset per class, without any host work. ``classes`` gives the class of every position of
    a draw (class-major: all of class 0 first).
    """

    def __init__(self, labels: Tensor, num_classes: int, take: Tensor, device: torch.device | str) -> None:
        device = torch.device(device)
        y = labels.detach().cpu()
        counts = torch.bincount(y, minlength=num_classes)
        take = take.detach().cpu().to(torch.long)
        if bool((take > counts).any()) or bool((take < 0).any()):
            raise ValueError(f"cannot draw {take.tolist()} images per class from classes of {counts.tolist()}")
        width = int(counts.max())
        order = torch.argsort(y, stable=True)  # class-major, each class in index order
        starts = torch.cumsum(counts, 0) - counts
        col = torch.arange(width)
        valid = col[None, :] < counts[:, None]
        rows = torch.where(valid, starts[:, None] + col[None, :], 0)
        self.device = device
        self.shape = (num_classes, width)
        self.index = order[rows].to(device)
        self.pad = (~valid).to(torch.float32).mul_(2.0).to(device)  # uniforms are < 1: padding ranks last
        self.take = take
        self.width = int(take.max()) if take.numel() else 0
        # positions kept in the flattened [classes, width] draw (None: every position)
        keep = (col[None, : self.width] < take[:, None]).flatten()
        self.keep = None if bool(keep.all()) else keep.nonzero().flatten().to(device)
        self.classes = torch.repeat_interleave(torch.arange(num_classes), take).to(device)

    def __len__(self) -> int:
        return int(self.take.sum())

    def draw(self, gen: torch.Generator) -> Tensor:
        """One batch: train indices (int64, on the device), class-major, ``take[c]`` of class ``c``."""
        keys = torch.rand(self.shape, generator=gen, device=self.device).add_(self.pad)
        # Unequal takes keep a prefix of every row: then the prefix must be the smallest keys.
        ranked = torch.topk(keys, self.width, dim=1, largest=False, sorted=self.keep is not None).indices
        idx = self.index.gather(1, ranked).flatten()
        return idx if self.keep is None else idx[self.keep]


class RealImages:
    """The train split as model input on ``device``: ``real[idx]`` is the prepared float32 batch.

    Prepared (normalised) once, as one float32 tensor on the device, when that takes at most
    ``max_bytes`` (CIFAR-10's 50,000 images: 600 MB); else kept as stored and prepared per batch.
    """

    def __init__(self, dataset: "Dataset", device: torch.device | str, max_bytes: int = 4 << 30) -> None:
        self.device = torch.device(device)
        self.dataset = dataset
        x = dataset.x_train
        self.prepared = x.numel() * 4 <= max_bytes
        self.x = dataset.prepare(x.to(self.device)).to(torch.float32) if self.prepared else x

    def __getitem__(self, idx: Tensor) -> Tensor:
        if self.prepared:
            return torch.index_select(self.x, 0, idx)  # (much faster than x[idx] on the CPU)
        x = self.dataset.prepare(self.x[idx.to(self.x.device)])
        return x.to(device=self.device, dtype=torch.float32)
