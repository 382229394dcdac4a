"""Loss landscapes: the loss along the straight path between two networks, and 2-D random slices.

* :func:`path_losses` - loss and accuracy at each alpha of ``(1 - alpha) a + alpha b``: the same
  interpolation as the instability analysis (:func:`dpcore.analysis.instability.interpolate`, exact at
  both ends), on any split the caller passes (``interpolation_curve`` there is the test-split form that
  an instability run records).
* :func:`slice_2d` - Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"): the loss and
  accuracy on a ``grid x grid`` plane ``state + alpha d1 + beta d2`` through ``state``, along two
  random FILTER-NORMALISED directions.

Direction construction (:func:`filter_normalised_direction`): a standard normal tensor for every
prunable weight (Conv/Linear), then each filter (the output channel of a Conv weight, the output row of
a Linear weight: index 0 of the weight) rescaled to the norm of that filter of the weight. Biases,
norm-layer parameters and buffers get a zero direction, so they stay at ``state``; with a mask the
masked weights' directions are zero before normalising, so the whole plane lies in the mask's subspace
(masked weights stay exactly zero). Evaluation is :func:`dpcore.training.evaluate` (eval mode: BatchNorm
uses the running statistics of ``state``). The model is restored to what it held before the call.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..masks import Mask, prunable
from ..training import evaluate, restore, snapshot
from .instability import interpolate

State = dict[str, Tensor]


def path_losses(model: nn.Module, a_state: State, b_state: State, x: Tensor, y: Tensor, alphas: list[float], *,
                prepare: Callable[[Tensor], Tensor] = lambda t: t, batch_size: int = 2048) -> dict:
    """Loss and accuracy of ``(1 - alpha) a + alpha b`` on ``(x, y)`` at every alpha (``prepare`` maps the
    stored images to model input, e.g. ``dataset.prepare``). Returns ``{"alphas", "loss", "acc"}`` (lists,
    accuracies as fractions). The model is restored to what it held before the call."""
    saved = snapshot(model)
    loss, acc = [], []
    try:
        for alpha in alphas:
            restore(model, interpolate(a_state, b_state, float(alpha)))
            ac, lo = evaluate(model, x, y, prepare=prepare, batch_size=batch_size)
            acc.append(ac)
            loss.append(lo)
    finally:
        restore(model, saved)
    return {"alphas": [float(a) for a in alphas], "loss": loss, "acc": acc}


def filter_normalised_direction(weights: dict[str, Tensor], gen: torch.Generator,
                                mask: Mask | None = None) -> dict[str, Tensor]:
    """A random direction for every weight in ``weights`` (name -> tensor, index 0 = filters): normal
    noise drawn on the CPU from ``gen`` (device-independent), zero where ``mask`` is False, every
    filter scaled to the norm of the same filter of the weight (a filter whose weights are all zero,
    or all masked, gets a zero direction)."""
    out = {}
    for name, w in weights.items():
        w = w.detach()
        d = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        if mask is not None and name in mask:
            keep = mask[name].to(device=w.device, dtype=w.dtype)
            d = d * keep
            w = w * keep
        if w.dim() <= 1:
            d_norm, w_norm = d.norm(), w.norm()
            out[name] = d * (w_norm / d_norm) if float(d_norm) > 0 else torch.zeros_like(d)
            continue
        d_norm = d.flatten(1).norm(dim=1)
        w_norm = w.flatten(1).norm(dim=1)
        scale = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(d_norm))
        out[name] = d * scale.view(-1, *([1] * (w.dim() - 1)))
    return out


def grid_points(grid: int, span: float) -> list[float]:
    """``grid`` evenly spaced points from ``-span`` to ``span``; the middle one is exactly 0.0 when ``grid`` is odd."""
    return [span * (2 * i / (grid - 1) - 1) for i in range(grid)]


def slice_2d(model: nn.Module, state: State, x: Tensor, y: Tensor, *, grid: int = 11, span: float = 1.0,
             seed: int = 0, mask: Mask | None = None, prepare: Callable[[Tensor], Tensor] = lambda t: t,
             batch_size: int = 2048) -> dict:
    """Loss and accuracy on the plane ``state + alpha d1 + beta d2`` (see the module docstring).

    ``state``: a state dict of ``model`` (the centre); ``x, y``: the split to evaluate (stored images and
    labels; ``prepare`` makes model input, e.g. ``dataset.prepare``); ``grid`` (>= 2) points per axis
    from ``-span`` to ``span`` (odd ``grid``: the centre is on the grid, exactly ``state``); directions
    ``d1, d2`` seeded by ``seed``.

    Returns ``{"alphas": [grid], "betas": [grid], "loss": [[...]], "acc": [[...]], "seed", "span"}`` with
    ``loss[i][j]`` / ``acc[i][j]`` at ``(alphas[i], betas[j])``. The model is restored afterwards.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ConfigError(f"landscape: grid must be an integer >= 2, got {grid!r}; use an odd number such as 11")
    if not span > 0:
        raise ConfigError(f"landscape: span must be > 0, got {span!r}; use e.g. 1.0")
    names = [n for n in prunable(model) if n in state]
    gen = torch.Generator().manual_seed(int(seed))
    weights = {n: state[n] for n in names}
    d1 = filter_normalised_direction(weights, gen, mask)
    d2 = filter_normalised_direction(weights, gen, mask)
    alphas = grid_points(grid, float(span))
    betas = list(alphas)
    saved = snapshot(model)
    loss = [[0.0] * grid for _ in range(grid)]
    acc = [[0.0] * grid for _ in range(grid)]
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                point = dict(state)
                for n in names:
                    point[n] = state[n] + a * d1[n] + b * d2[n]
                restore(model, point)
                acc[i][j], loss[i][j] = evaluate(model, x, y, prepare=prepare, batch_size=batch_size)
    finally:
        restore(model, saved)
    return {"alphas": alphas, "betas": betas, "loss": loss, "acc": acc, "seed": int(seed), "span": float(span)}
