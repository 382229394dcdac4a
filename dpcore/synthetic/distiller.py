"""The interface every distillation method implements.

A method is one module exposing an object that follows :class:`Distiller`; it is listed in
``dpcore.synthetic.DISTILLERS`` under its ``name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from dpcore.synthetic.set import SyntheticSet

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.data.dataset import Dataset

ProgressFn = Callable[[int, int, "float | None"], None]
"""``progress(done, total, loss)``: called with (0, total, None) first, then at most ~200 times."""
StopFn = Callable[[], bool]
"""``should_stop()``: polled once per iteration; True ends the distillation with a partial set."""


@runtime_checkable
class Distiller(Protocol):
    """A dataset distillation (or selection) method.

    Optional extras a method may have: ``resolve(dataset_name, ipc, params) -> dict`` when its
    defaults depend on the dataset and ipc (MTT, GM; the cache hashes its result), and a
    ``workdir`` keyword in ``distill`` to receive a folder for reusable intermediates (MTT's
    expert trajectories; the cache passes its own folder).
    """

    name: str
    defaults: dict[str, Any]

    def distill(
        self,
        dataset: "Dataset",
        *,
        ipc: int,
        model_factory: Callable[[], nn.Module],
        seed: int,
        device: torch.device | str,
        params: dict[str, Any],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> SyntheticSet: ...
