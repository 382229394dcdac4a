"""The distillers' one way to build Differentiable Siamese Augmentation from their parameters.

:func:`make_dsa` gives the distillers' form, ``aug(x, seed)``: the seed alone fixes the op and its
parameters, so two batches augmented with the same seed are transformed identically (siamese) - and
nothing leaves the device: the op is chosen on the host from the seed (no tensor), the parameters are
drawn on ``x``'s device by a generator seeded with it (:meth:`dpcore.augment.DSA.apply`).
:func:`train_augment` gives the form :func:`dpcore.training.train` calls, ``aug(x, generator)``.
"""

from __future__ import annotations

import random
from typing import Callable

import torch
from torch import Tensor

from dpcore.augment import DSA
from dpcore.training import device_generator


# The ops that transform every channel of an image alike (all but colour, which mixes channels).
_PER_CHANNEL = frozenset({"crop", "cutout", "flip", "scale", "rotate"})


class SeededDSA:
    """``aug(x, seed)``: one DSA op and its parameters, all fixed by ``seed``, drawn without host work.

    ``batchwise=True``: one parameter set for the whole batch (every image transformed alike);
    ``batchwise=False``: one per image (the first k images of two batches still match). A batchwise
    geometric op runs once, on the batch laid out as the channels of one image (same result: it is
    one transform of every channel; the sampling grid is then computed once, not once per image).
    """

    def __init__(self, strategy: str, batchwise: bool = True) -> None:
        self.dsa = DSA(strategy=strategy, batchwise=batchwise)
        self.ops = self.dsa.ops
        self.batchwise = batchwise
        self._generators: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return f"SeededDSA({self.dsa!r})"

    def op(self, seed: int) -> str:
        """The op that ``seed`` picks."""
        return self.ops[random.Random(int(seed)).randrange(len(self.ops))]

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        if not self.ops:
            return x
        gen = self._generators.get(x.device)
        if gen is None:
            gen = self._generators[x.device] = device_generator(x.device, 0)
        op = self.op(seed)
        gen.manual_seed(int(seed))
        if self.batchwise and op in _PER_CHANNEL and x.dim() == 4 and x.shape[0] > 1:
            b, c, h, w = x.shape
            return self.dsa.apply(x.reshape(1, b * c, h, w), op, gen).view(b, c, h, w)
        return self.dsa.apply(x, op, gen)


def make_dsa(enabled: bool, strategy: str, *, batchwise: bool = True) -> SeededDSA | None:
    """The augmentation of a method's ``dsa`` / ``dsa_strategy`` parameters, or None when ``dsa`` is off.

    Batchwise (the default) for siamese pairs of real and synthetic batches; per image
    (``batchwise=False``) when training a network on the images.
    """
    return SeededDSA(strategy, batchwise=batchwise) if enabled else None


def train_augment(enabled: bool, strategy: str, seed: int) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """Per-image DSA for :func:`dpcore.training.train` (expert training): each batch's op from a host RNG
    seeded by ``seed``, its parameters from the training's generator on the batch's device."""
    return DSA(strategy=strategy, batchwise=False).sampler(seed) if enabled else None
