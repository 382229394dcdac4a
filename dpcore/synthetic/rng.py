"""Freshly initialised networks, seeded, on the method's device (generators: ``dpcore.training.device_generator``)."""

from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import nn


def rng_devices(device: torch.device | str) -> list[int]:
    """The CUDA devices whose RNG state ``torch.random.fork_rng`` must save for work on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


_GLOBAL_RNG = threading.Lock()  # threads building models at once (MTT's experts) take turns with the global RNG


def seeded_model(factory: Callable[[], nn.Module], seed: int, device: torch.device | str, *,
                 build_on_host: bool = False) -> nn.Module:
    """``factory()`` initialised from the global RNG seeded by ``seed`` (the caller's RNG state is
    restored afterwards), on ``device``.

    The network is built directly on ``device`` (its parameters allocated and drawn there by the
    device's generator: no host init, no copy), unless ``build_on_host``: then it is drawn by the
    CPU generator and copied (device-independent initial weights).
    """
    device = torch.device(device)
    with _GLOBAL_RNG, torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(int(seed))
        if build_on_host:
            return factory().to(device)
        with device:
            return factory()
