"""The "data diet" baseline: a class-balanced random subset of the real training images."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from dpcore.synthetic.base import (
    ProgressFn,
    StopFn,
    SyntheticSet,
    Timer,
    check_ipc,
    class_sorted_index,
    resolve_params,
    take_per_class,
)


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
        timer = Timer(torch.device(device))
        C = dataset.num_classes
        gen = torch.Generator().manual_seed(int(seed))
        order, starts, _ = class_sorted_index(dataset.y_train.detach().cpu(), C, gen)
        idx, labels = take_per_class(order, starts, torch.full((C,), ipc, dtype=torch.long))
        x = dataset.x_train[idx.to(dataset.x_train.device)]
        images = dataset.prepare(x).to(torch.float32).detach().cpu().clone()
        if progress is not None:
            progress(1, 1, None)
        meta = {
            "method": self.name,
            "dataset": dataset.name,
            "whitened": bool(dataset.whitened),
            "ipc": ipc,
            "seed": int(seed),
            "params": p,
            "distill_s": timer.elapsed(),
            "iterations_done": 1,
            "final_loss": None,
            "indices": idx.tolist(),
        }
        return SyntheticSet(images=images, labels=labels.to(torch.int64), lr=None, meta=meta)


DISTILLER = RandomSubset()
