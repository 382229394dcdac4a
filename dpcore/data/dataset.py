"""The in-memory dataset: each split is one tensor that lives on the run's device."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """Train and test splits as whole tensors.

    ``x_*`` are uint8 [N, C, H, W] images (normalised per batch by :meth:`prepare`), or float32
    already in model-input space when a whitening (ZCA) was applied at load time.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    augment: str = "none"  # "crop_flip" for CIFAR-like data, "none" otherwise
    whitened: bool = False  # True when x_* are float32 in ZCA space
    train_per_class: int = 0  # images per class kept by :meth:`subset` (0 = the whole train split)
    # (scale, shift) per device for prepare(); built on first use (a copy of the dataset starts empty)
    _norm: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def subset(self, per_class: int, seed: int = 0) -> "Dataset":
        """A class-balanced random subset of the training split (the test split is kept whole)."""
        gen = torch.Generator().manual_seed(seed)
        labels = self.y_train.cpu()
        picks = []
        for c in range(self.num_classes):
            idx = torch.nonzero(labels == c).flatten()
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        keep = torch.cat(picks).sort().values.to(self.x_train.device)
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep], train_per_class=per_class)

    def norm_constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(scale, shift) [1, C, 1, 1] on ``device`` with input = uint8 * scale + shift, made once per device."""
        consts = self._norm.get(device)
        if consts is None:
            mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
            consts = ((1.0 / (255.0 * std)).float().to(device), (-mean / std).float().to(device))
            self._norm[device] = consts
        return consts

    def prepare(self, x: Tensor) -> Tensor:
        """Turn a batch of stored images into float32 model input (on the batch's device):
        ``(x / 255 - mean) / std`` for uint8 images, as one fused multiply-add after the conversion."""
        if x.dtype != torch.uint8:
            return x.float()
        scale, shift = self.norm_constants(x.device)
        return torch.addcmul(shift, x.float(), scale)
