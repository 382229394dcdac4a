"""The sharpness of a network: the top eigenvalue of the Hessian of its training loss (power iteration).

The loss is the mean cross-entropy over a FIXED list of real batches (the same images at every
Hessian-vector product, so the power iteration sees one matrix): ``L = sum_b n_b CE_b / sum_b n_b``.
Hessian-vector products are exact, by double backprop (Pearlmutter): ``H v = d/dw (dL/dw . v)``.

Which parameters the Hessian is over:

* ``mask`` None: every floating-point parameter that requires grad (weights, biases, norm scales);
* with a ``mask``: only the UNMASKED prunable weights (Conv/Linear weights where the mask is True),
  i.e. the Hessian of the loss restricted to the sparse network's own weights. The other
  parameters are held fixed and the masked weights are set to zero for the computation (the
  model itself is left as it was).

The model runs in eval mode (BatchNorm uses its running statistics, so the loss is a fixed function
of the weights and no buffer changes); its mode is restored afterwards.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from ..masks import Mask, prunable

Batch = tuple[Tensor, Tensor]


def _parameters(model: nn.Module, mask: Mask | None) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """(leaves that the Hessian is over, their masks or None): detached copies that require grad."""
    if mask is None:
        named = {n: p for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}
        return {n: p.detach().clone().requires_grad_(True) for n, p in named.items()}, None
    weights = prunable(model)
    unknown = sorted(set(mask) - set(weights))
    if unknown:
        raise ConfigError(f"hessian: the mask names {unknown[0]!r}, which is not a prunable weight of this model; "
                          f"pass a mask made for this model")
    masks = {n: mask[n].to(device=weights[n].device, dtype=weights[n].dtype) for n in mask}
    return {n: (weights[n].detach() * masks[n]).requires_grad_(True) for n in mask}, masks


def hvp_fn(model: nn.Module, batches: Sequence[Batch], leaves: dict[str, Tensor], masks: dict[str, Tensor] | None):
    """``v -> H v`` (lists of tensors shaped like ``leaves``) for the mean cross-entropy over ``batches``."""
    names = list(leaves)
    params = [leaves[n] for n in names]
    total = sum(int(xb.shape[0]) for xb, _ in batches)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in params]
        for xb, yb in batches:
            loss = F.cross_entropy(functional_call(model, leaves, (xb,)), yb) * (xb.shape[0] / total)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * vi).sum() for g, vi in zip(grads, v))
            for acc, h in zip(out, torch.autograd.grad(dot, params)):
                acc.add_(h)
        if masks is not None:
            out = [h * masks[n] for n, h in zip(names, out)]
        return out

    return hvp


def _norm(v: list[Tensor]) -> Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in v))


def top_hessian_eigenvalue(model: nn.Module, batches: Sequence[Batch], *, iterations: int = 20, tol: float = 1e-3,
                           seed: int = 0, mask: Mask | None = None) -> dict:
    """The Hessian eigenvalue of largest magnitude (the top one wherever the loss is locally convex,
    e.g. after training) by power iteration over Hessian-vector products.

    ``batches``: the fixed ``(x, y)`` batches of model input (prepared) and int64 labels, on the model's
    device (e.g. :func:`dpcore.pruning_at_init.real_batches`). The start vector is a standard normal
    drawn on the CPU from ``seed`` (zero on masked weights). At each iteration the eigenvalue estimate
    is the Rayleigh quotient ``v . H v`` of the unit vector ``v``; the iteration stops when it changes
    by at most ``tol`` relative to its magnitude (``converged`` True) or after ``iterations``.

    Returns ``{"eigenvalue": float, "iterations": int (done), "converged": bool, "history": [float, ...]
    (the estimate after each iteration), "parameters": int (the dimension of the Hessian)}``.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"hessian: iterations must be an integer >= 1, got {iterations!r}; set it to 1 or more")
    if not tol > 0:
        raise ConfigError(f"hessian: tol must be > 0, got {tol!r}; use e.g. 1e-3")
    batches = [(xb, yb) for xb, yb in batches if xb.shape[0] > 0]
    if not batches:
        raise ConfigError("hessian: needs at least one batch of real data, got none; pass real batches")
    leaves, masks = _parameters(model, mask)
    names = list(leaves)
    if not names:
        raise ConfigError("hessian: the model has no parameters to differentiate; pass a model with weights")
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(leaves[n].shape, generator=gen, dtype=leaves[n].dtype).to(leaves[n].device) for n in names]
    if masks is not None:
        v = [t * masks[n] for n, t in zip(names, v)]
    norm = _norm(v)
    if float(norm) == 0.0:
        raise ConfigError("hessian: every weight is masked; pass a mask that keeps some weights")
    v = [t / norm.to(t.dtype) for t in v]
    was_training = model.training
    model.eval()
    hvp = hvp_fn(model, batches, leaves, masks)
    history: list[float] = []
    converged = False
    eig = 0.0
    try:
        for _ in range(iterations):
            hv = hvp(v)
            eig = float(sum((a.double() * b.double()).sum() for a, b in zip(v, hv)))
            if not math.isfinite(eig):
                raise FloatingPointError(f"hessian: the eigenvalue estimate became {eig}")
            history.append(eig)
            if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * max(abs(history[-1]), 1e-12):
                converged = True
                break
            norm = _norm(hv)
            if float(norm) == 0.0:  # v is in the null space: the Hessian there is 0
                converged = True
                break
            v = [t / norm.to(t.dtype) for t in hv]
    finally:
        model.train(was_training)
    return {"eigenvalue": eig, "iterations": len(history), "converged": converged, "history": history,
            "parameters": int(sum(int(m.sum()) for m in masks.values()) if masks is not None
                              else sum(t.numel() for t in leaves.values()))}
