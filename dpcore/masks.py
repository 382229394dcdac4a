"""Masks over every Conv/Linear weight: magnitude and random pruning, applied without hooks.

A mask is a dict ``{parameter name: bool tensor}`` over the prunable weights. Pruning targets the
closed-form count ``round(n * (1 - fraction) ** round)`` so sparsity never drifts by rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Mask = dict[str, Tensor]


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Conv and Linear layer, in module order."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}


def output_layer_name(model: nn.Module) -> str:
    head = getattr(model, "classifier", None)
    names = list(prunable(model))
    if isinstance(head, nn.Linear):
        for name, p in prunable(model).items():
            if p is head.weight:
                return name
    return names[-1]


def full_mask(model: nn.Module) -> Mask:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable(model).items()}


def sparsity(mask: Mask) -> float:
    total = sum(m.numel() for m in mask.values())
    alive = sum(int(m.sum()) for m in mask.values())
    return 1.0 - alive / total


def layer_sparsity(mask: Mask) -> dict[str, float]:
    return {name: 1.0 - int(m.sum()) / m.numel() for name, m in mask.items()}


def remaining_target(total: int, fraction: float, rounds: int) -> int:
    return round(total * (1.0 - fraction) ** rounds)


class MaskApplier:
    """Multiplies the masked weights in place; call after every optimiser step (no forward hooks)."""

    def __init__(self, model: nn.Module, mask: Mask):
        params = prunable(model)
        self.params = [params[name] for name in mask]
        # Each mask in its parameter's dtype, device and memory format (channels-last conv weights included),
        # so the in-place multiply never mixes layouts.
        self.masks = [torch.empty_like(p).copy_(mask[name]) for name, p in zip(mask, self.params)]

    @torch.no_grad()
    def __call__(self) -> None:
        torch._foreach_mul_(self.params, self.masks)


def _prune_group(scores: dict[str, Tensor], mask: Mask, names: list[str], keep: int) -> None:
    """Keep the ``keep`` highest-scoring alive weights among ``names``; prune the rest in ``mask``."""
    if not names:
        return
    flat = torch.cat([torch.where(mask[n], scores[n], torch.full_like(scores[n], -1.0)).flatten() for n in names])
    alive = int(sum(int(mask[n].sum()) for n in names))
    drop = alive - keep
    if drop <= 0:
        return
    # Pruned weights score -1 < any magnitude/uniform score, so the lowest `drop` alive are next.
    order = torch.argsort(flat, stable=True)
    dead = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    n_pruned_already = flat.numel() - alive
    dead[order[: n_pruned_already + drop]] = True
    offset = 0
    for n in names:
        size = mask[n].numel()
        mask[n] = ~dead[offset: offset + size].view_as(mask[n])
        offset += size


def prune(scores: dict[str, Tensor], mask: Mask, *, total_round: int, fraction: float, scope: str,
          output_name: str | None = None, output_fraction: float = -1.0) -> Mask:
    """Next mask after round ``total_round``: drop the lowest-scoring alive weights.

    ``scores`` are non-negative (|w| for magnitude pruning, uniform noise for random pruning).
    ``scope`` is "global" (one ranking across layers) or "layer" (each layer separately).
    ``output_fraction`` >= 0 prunes the output layer at its own rate, apart from the global ranking.
    """
    new = {n: m.clone() for n, m in mask.items()}
    scores = {n: s.detach().abs().float().to(mask[n].device) for n, s in scores.items()}
    names = list(mask)
    separate: list[tuple[list[str], float]] = []
    if output_name is not None and output_fraction >= 0:
        names.remove(output_name)
        separate.append(([output_name], output_fraction))
    if scope == "layer":
        separate += [([n], fraction) for n in names]
    else:
        separate.append((names, fraction))
    for group, frac in separate:
        total = sum(mask[n].numel() for n in group)
        _prune_group(scores, new, group, remaining_target(total, frac, total_round))
    return new


def magnitude_prune(model: nn.Module, mask: Mask, **kw) -> Mask:
    params = prunable(model)
    return prune({n: params[n] for n in mask}, mask, output_name=output_layer_name(model), **kw)


def random_prune(mask: Mask, generator: torch.Generator, output_name: str | None = None, **kw) -> Mask:
    """Random nested pruning: uniform scores, so each round removes a random subset of survivors."""
    scores = {n: torch.rand(m.shape, generator=generator) for n, m in mask.items()}
    return prune(scores, {n: m.cpu() for n, m in mask.items()}, output_name=output_name, **kw)


def mask_to_cpu(mask: Mask) -> Mask:
    return {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in mask.items()}
