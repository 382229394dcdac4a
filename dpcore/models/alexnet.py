"""MTT's CIFAR AlexNet (no norm, no dropout)."""

from __future__ import annotations

from torch import nn

from ._base import Net, flat_dim, pooled

OPTIONS: dict[str, object] = {}


def build(num_classes: int, in_shape: tuple[int, int, int]) -> Net:
    c, h, w = in_shape
    features = nn.Sequential(
        nn.Conv2d(c, 128, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 192, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(192, 192, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return Net(features, flat_dim("alexnet", 192, pooled(h, 3), pooled(w, 3)), num_classes)
