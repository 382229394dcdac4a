"""What a distillation records about itself: its loss curve and the common ``meta`` fields."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

MAX_CURVE_POINTS = 500


def curve(values: Tensor, done: int, max_points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """``[[iteration, value], ...]`` of the first ``done`` entries of ``values`` (1-based iterations):
    at most about ``max_points`` evenly spaced points, always including the last. The tensor may
    live on the device: it is read to the host once."""
    if done <= 0:
        return []
    host = values[:done].detach().to("cpu", torch.float64).tolist()
    stride = max(1, math.ceil(done / max_points))
    keep = list(range(0, done, stride))
    if keep[-1] != done - 1:
        keep.append(done - 1)
    return [[i + 1, host[i]] for i in keep]


def distill_meta(method: str, dataset, *, ipc: int, seed: int, params: dict[str, Any], distill_s: float,
                 done: int, losses: Tensor | None, device: torch.device | str, stopped: bool = False,
                 **extra: Any) -> dict[str, Any]:
    """The ``meta`` fields every method records (then ``extra``): what was distilled and how, the time
    it took, the iterations done, the final loss and the loss curve (from ``losses``, one value per
    iteration, read once; None: no loss), the device; ``stopped`` only when the run was stopped."""
    loss_curve = curve(losses, done) if losses is not None else []
    meta: dict[str, Any] = {
        "method": method,
        "dataset": dataset.name,
        "whitened": bool(dataset.whitened),
        "ipc": ipc,
        "seed": int(seed),
        "params": params,
        "distill_s": float(distill_s),
        "iterations_done": done,
        "final_loss": loss_curve[-1][1] if loss_curve else None,
        "loss_curve": loss_curve,
        "device": str(device),
        **extra,
    }
    if stopped:
        meta["stopped"] = True
    return meta
