"""Model registry: ``build_model(name, num_classes=..., in_shape=..., **options)``.

Every model is a :class:`~dpcore.models._base.Net`: ``forward(x)`` gives logits, ``embed(x)`` the
features just before the output layer, and ``classifier`` is that output layer (the last
``nn.Linear``). The prunable weights are the ``weight`` of every Conv1d, Conv2d and Linear layer
(:func:`dpcore.masks.prunable`); biases and norm parameters are not pruned.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from dpcore.errors import ConfigError

from . import alexnet, conv_n, convnet, lenet, resnet, vgg
from ._base import Net

_REGISTRY: dict[str, tuple[Callable[..., Net], dict[str, object]]] = {
    "lenet-300-100": (lenet.build, lenet.OPTIONS),
    "convnet": (convnet.build, convnet.OPTIONS),
    "alexnet": (alexnet.build, alexnet.OPTIONS),
    "vgg11": (vgg.build, vgg.OPTIONS),
    "resnet18": (resnet.build, resnet.OPTIONS),
    "conv2": (partial(conv_n.build, pairs=1), conv_n.OPTIONS),
    "conv4": (partial(conv_n.build, pairs=2), conv_n.OPTIONS),
    "conv6": (partial(conv_n.build, pairs=3), conv_n.OPTIONS),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

__all__ = ["MODEL_NAMES", "Net", "build_model", "model_options"]


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts, with their defaults (a fresh dict)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    return dict(_REGISTRY[name][1])


def build_model(name: str, *, num_classes: int, in_shape: tuple[int, int, int], **options: object) -> nn.Module:
    """Build a freshly initialised model (PyTorch default init; uses only the global torch RNG)."""
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; allowed options: {accepted}")
    if len(in_shape) != 3:
        raise ConfigError(f"model {name!r}: in_shape must be (channels, height, width), got {tuple(in_shape)}")
    builder = _REGISTRY[name][0]
    return builder(num_classes, tuple(int(s) for s in in_shape), **{**allowed, **options})
