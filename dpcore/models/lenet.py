"""LeNet-300-100 (the MLP of the lottery-ticket paper)."""

from __future__ import annotations

import math

from torch import nn

from ._base import Net

OPTIONS: dict[str, object] = {}


def build(num_classes: int, in_shape: tuple[int, int, int]) -> Net:
    features = nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(in_shape), 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
    )
    return Net(features, 100, num_classes)
