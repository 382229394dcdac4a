"""Frankle & Carbin's Conv-2/4/6: pairs of 3x3 convs (each pair then max-pool 2), FC 256-256-C."""

from __future__ import annotations

from torch import nn

from ._base import Net, flat_dim, pooled

OPTIONS: dict[str, object] = {}
PAIR_WIDTHS = (64, 128, 256)


def build(num_classes: int, in_shape: tuple[int, int, int], *, pairs: int) -> Net:
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for width in PAIR_WIDTHS[:pairs]:
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    dim = flat_dim(f"conv{2 * pairs}", c, pooled(h, pairs), pooled(w, pairs))
    layers += [nn.Flatten(), nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()]
    return Net(nn.Sequential(*layers), 256, num_classes)
