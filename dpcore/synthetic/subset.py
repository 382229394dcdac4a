"""The "data diet" baseline: a class-balanced random subset of the real training images."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.meta import distill_meta
from dpcore.synthetic.params import check_ipc, resolve_params
from dpcore.synthetic.sampling import initial_images
from dpcore.synthetic.set import SyntheticSet
from dpcore.training import Stopwatch


class RandomSubset:
    name = "random-subset"
    defaults: dict[str, Any] = {}

    def distill(
        self,
        dataset,
        *,
        ipc: int,
        model_factory: Callable[[], nn.Module] | None = None,
        seed: int,
        device: torch.device | str = "cpu",
        params: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> SyntheticSet:
        p = resolve_params(self.name, self.defaults, params)
        check_ipc(dataset, ipc, self.name)
        watch = Stopwatch(torch.device(device))
        images, labels, idx = initial_images(dataset, ipc, seed, "cpu")  # the other methods' starting images
        if progress is not None:
            progress(1, 1, None)
        meta = distill_meta(self.name, dataset, ipc=ipc, seed=seed, params=p, distill_s=watch.elapsed(), done=1,
                            losses=None, device="cpu", indices=idx.tolist())
        return SyntheticSet(images=images, labels=labels, lr=None, meta=meta)


DISTILLER = RandomSubset()
