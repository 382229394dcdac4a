"""The network a method distils with: the profile's model, or one named in the method's parameters."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from dpcore.errors import ConfigError


def model_from_spec(method: str, spec: str, dataset, default: Callable[[], nn.Module],
                    device: torch.device) -> Callable[[], nn.Module]:
    """The network factory a method distils with: ``default`` (the profile's model) for ``""``, else a
    registry model for ``dataset`` named by ``"name"`` or ``"name:option=value,option=value"``
    (e.g. ``"convnet:width=32"``; integer values are read as integers)."""
    if not spec:
        return default
    from dpcore.models import build_model

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"synthetic method {method!r}: bad model spec {spec!r}; write name:option=value,...")
        value = value.strip()
        options[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    name = name.strip()

    def factory() -> nn.Module:  # built on the device (drawn by its generator)
        with torch.device(device):
            return build_model(name, num_classes=dataset.num_classes, in_shape=dataset.shape, **options)

    try:
        factory()
    except ConfigError as err:
        raise ConfigError(f"synthetic method {method!r}: model spec {spec!r}: {err}") from None
    return factory
