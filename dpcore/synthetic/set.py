"""The synthetic set: a small training set in the dataset's model-input space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class SyntheticSet:
    """A small training set in the dataset's model-input space.

    ``images`` are float32 [N, C, H, W], normalised like ``Dataset.prepare`` output (or in ZCA
    space when the dataset is whitened); ``labels`` are int64 [N]. ``lr`` is a learned learning
    rate when the method produced one (e.g. MTT), else None. ``meta`` is JSON-serialisable.
    """

    images: Tensor
    labels: Tensor
    lr: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "SyntheticSet":
        return SyntheticSet(self.images.to(device), self.labels.to(device), self.lr, dict(self.meta))

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()

    def ipc(self, num_classes: int) -> int | None:
        """Images per class when every class has the same number, else None."""
        counts = set(self.class_counts(num_classes))
        return counts.pop() if len(counts) == 1 else None
