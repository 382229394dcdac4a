"""One-shot pruning at initialisation: SNIP, GraSP and SynFlow scores for :func:`dpcore.masks.prune`.

Every score is a dict ``{name: non-negative float tensor}`` over :func:`dpcore.masks.prunable` (the
weight of every Conv/Linear layer), shaped like the weight, where a HIGHER score means MORE important:
``masks.prune`` keeps the highest, so the scores plug into the same round / fraction / scope /
output-layer options as IMP's magnitude pruning. The model is never changed: gradients are taken with
``torch.autograd.grad`` on stand-in tensors (``torch.func.functional_call``), nothing is written to
``.grad``, and the BatchNorm running statistics a train-mode forward touches are put back.

* :func:`snip_scores` - SNIP (Lee et al. 2019), connection sensitivity ``|g * w|``.
* :func:`grasp_scores` - GraSP (Wang et al. 2020), ``S = -w * (H g)``; returned as a keep-score that
  ranks the weights in REVERSE of S (GraSP removes the largest S).
* :func:`synflow_scores` / :func:`synflow_prune` - SynFlow (Tanaka et al. 2020), data-free and iterative.
* :func:`one_shot_prune` - the one entry point: ``method`` in :data:`METHODS`.
* :func:`real_batches` - a fixed list of random real training batches (model input) to score with.

Batches are ``(x, y)`` pairs of model input (already prepared, e.g. ``dataset.prepare(x_uint8)``) and
int64 labels, on the model's device.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigError
from .masks import Mask, full_mask, output_layer_name, prunable, prune

Scores = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]

METHODS = ("snip", "grasp", "synflow")
DATA_METHODS = ("snip", "grasp")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


# ------------------------------------------------------------------------------------------ helpers
def real_batches(dataset, *, batches: int, batch_size: int, seed: int,
                 device: torch.device | str | None = None) -> list[Batch]:
    """``batches`` random batches of ``batch_size`` distinct training images (model input, float32) and
    their labels, drawn without replacement from a CPU generator seeded by ``seed`` (the same images on
    every device). Fewer images than asked for are all taken (the last batch may be short)."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"pruning at init: the number of real batches must be an integer >= 1, got {batches!r}; "
                          f"set it to 1 or more")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"pruning at init: the batch size must be an integer >= 1, got {batch_size!r}; "
                          f"set it to 1 or more")
    n = int(dataset.y_train.shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[: batches * batch_size]
    device = torch.device(device) if device is not None else dataset.x_train.device
    out = []
    for idx in order.split(batch_size):
        idx = idx.to(dataset.x_train.device)
        x = dataset.prepare(dataset.x_train[idx]).to(device=device, dtype=torch.float32)
        out.append((x, dataset.y_train[idx].to(device)))
    return out


def _as_batches(x: Tensor | Sequence[Tensor] | None, y: Tensor | Sequence[Tensor] | None, method: str) -> list[Batch]:
    """``x, y`` as one batch (two tensors) or several (two equal-length sequences of tensors)."""
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        pairs = [(x, y)]
    elif x is None or y is None or isinstance(x, Tensor) or isinstance(y, Tensor):
        pairs = []
    else:
        xs, ys = list(x), list(y)
        if len(xs) != len(ys):
            raise ConfigError(f"pruning at init {method!r}: {len(xs)} input batches but {len(ys)} label batches; "
                              f"pass one label tensor per input batch")
        pairs = list(zip(xs, ys))
    return _check_batches(pairs, method)


def _check_batches(batches: Sequence[Batch] | None, method: str) -> list[Batch]:
    pairs = [(xb, yb) for xb, yb in (batches or []) if xb.shape[0] > 0]
    if not pairs:
        raise ConfigError(f"pruning at init {method!r} needs at least one batch of real training data, got none; "
                          f"pass real batches (e.g. pruning_at_init.real_batches(dataset, batches=1, ...))")
    return pairs


def _check_iterations(iterations: object, method: str) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"pruning at init {method!r}: iterations must be an integer >= 1, got {iterations!r}; "
                          f"set it to 1 or more")
    return iterations


@contextlib.contextmanager
def _kept_buffers(model: nn.Module, train: bool) -> Iterator[None]:
    """The model in train (or eval) mode inside the block; its mode and every buffer (BatchNorm running
    statistics, which a train-mode forward updates) exactly as they were afterwards."""
    was_training = model.training
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
        model.train(was_training)


def _leaves(model: nn.Module, mask: Mask | None) -> dict[str, Tensor]:
    """Stand-ins for the prunable weights (masked ones zeroed), detached leaves that require grad."""
    out = {}
    for name, p in prunable(model).items():
        w = p.detach()
        if mask is not None and name in mask:
            w = w * mask[name].to(device=w.device, dtype=w.dtype)
        out[name] = w.clone().requires_grad_(True)
    return out


def _loss(model: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    logits = functional_call(model, weights, (x,))
    if temperature != 1.0:
        logits = logits / temperature
    return F.cross_entropy(logits, y)


# ------------------------------------------------------------------------------------------ SNIP
def snip_scores(model: nn.Module, x: Tensor | Sequence[Tensor], y: Tensor | Sequence[Tensor],
                mask: Mask | None = None) -> Scores:
    """SNIP connection sensitivity ``|g * w|`` of every prunable weight.

    ``g = dL/dw`` of the mean cross-entropy, summed over the batches: ``x, y`` are one batch (two
    tensors) or several (two sequences of tensors); how many is the caller's setting. The forward runs
    in train mode (BatchNorm on batch statistics; its running statistics are restored). With ``mask``
    the masked weights are zero during the forward and score 0.
    """
    batches = _as_batches(x, y, "snip")
    weights = _leaves(model, mask)
    names = list(weights)
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    with _kept_buffers(model, train=True):
        for xb, yb in batches:
            g = torch.autograd.grad(_loss(model, weights, xb, yb), [weights[n] for n in names])
            for n, gn in zip(names, g):
                grads[n].add_(gn)
    return {n: (grads[n] * weights[n].detach()).abs() for n in names}


# ------------------------------------------------------------------------------------------ GraSP
def grasp_raw_scores(model: nn.Module, x: Tensor | Sequence[Tensor], y: Tensor | Sequence[Tensor], *,
                     temperature: float = 200.0, mask: Mask | None = None) -> Scores:
    """GraSP's own signed score ``S = -w * (H g)`` of every prunable weight (GraSP removes the LARGEST S).

    ``g`` is the gradient of the cross-entropy of ``logits / temperature`` summed over the batches; ``H g``
    is the Hessian (of that same summed loss, over the prunable weights) times ``g``, by double backprop:
    the gradient of ``sum_b g_b(w) . stop_grad(g)`` w.r.t. ``w``. Train mode, as :func:`snip_scores`.
    """
    if not temperature > 0:
        raise ConfigError(f"pruning at init 'grasp': temperature must be > 0, got {temperature!r}; "
                          f"use the default 200")
    batches = _as_batches(x, y, "grasp")
    weights = _leaves(model, mask)
    names = list(weights)
    leaves = [weights[n] for n in names]
    with _kept_buffers(model, train=True):
        g = [torch.zeros_like(w) for w in leaves]
        for xb, yb in batches:
            for acc, gb in zip(g, torch.autograd.grad(_loss(model, weights, xb, yb, temperature), leaves)):
                acc.add_(gb)
        hg = [torch.zeros_like(w) for w in leaves]
        for xb, yb in batches:
            gb = torch.autograd.grad(_loss(model, weights, xb, yb, temperature), leaves, create_graph=True)
            z = sum((a * b).sum() for a, b in zip(gb, g))
            for acc, h in zip(hg, torch.autograd.grad(z, leaves)):
                acc.add_(h)
    return {n: -(w.detach() * h) for n, w, h in zip(names, leaves, hg)}


def grasp_keep_scores(raw: Scores) -> Scores:
    """A non-negative keep-score from GraSP's ``S``: ``S.max() - S`` with the max taken over ALL layers.

    One shift for every layer keeps the order across layers (global scope) as well as within each layer
    (layer scope), so ``masks.prune``, which keeps the highest keep-scores, keeps the lowest S, as GraSP
    does. The shift is done in float64 and the result divided by its largest value (in [0, 1]), so the
    float32 ranking inside ``masks.prune`` keeps the distinct values apart as well as float32 can.
    Returned in float64.
    """
    top = max(float(s.double().max()) for s in raw.values())
    keep = {n: top - s.double() for n, s in raw.items()}
    scale = max(float(k.max()) for k in keep.values()) or 1.0
    return {n: k / scale for n, k in keep.items()}


def grasp_scores(model: nn.Module, x: Tensor | Sequence[Tensor], y: Tensor | Sequence[Tensor],
                 temperature: float = 200.0, mask: Mask | None = None) -> Scores:
    """GraSP keep-scores (non-negative, higher = keep): :func:`grasp_keep_scores` of
    :func:`grasp_raw_scores`, i.e. ``(S.max() - S) / max`` with ``S = -w * (H g)`` and the max over all
    layers. ``masks.prune`` on them removes the weights with the largest S, as GraSP does."""
    return grasp_keep_scores(grasp_raw_scores(model, x, y, temperature=temperature, mask=mask))


# ------------------------------------------------------------------------------------------ SynFlow
class _SynFlowNet:
    """A float64 copy of the model with every parameter replaced by its absolute value, every
    normalisation layer (BatchNorm, GroupNorm/instance norm, LayerNorm) replaced by the identity, in
    eval mode. The model itself is never touched (so its signs are "restored" trivially: exactly)."""

    def __init__(self, model: nn.Module):
        net = copy.deepcopy(model)
        _drop_norms(net)
        net.double().eval()
        for p in net.parameters():
            p.requires_grad_(False)
            p.abs_()
        self.net = net
        self.abs = {n: p.detach().clone() for n, p in prunable(net).items()}  # |w| in float64

    def scores(self, input_shape: tuple[int, ...], mask: Mask | None) -> Scores:
        weights = {}
        for name, w in self.abs.items():
            if mask is not None and name in mask:
                w = w * mask[name].to(device=w.device, dtype=w.dtype)
            weights[name] = w.clone().requires_grad_(True)
        device = next(iter(self.abs.values())).device
        ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
        with torch.enable_grad():
            r = functional_call(self.net, weights, (ones,)).sum()
            names = list(weights)
            grads = torch.autograd.grad(r, [weights[n] for n in names], allow_unused=True)
        return {n: (torch.zeros_like(weights[n]) if g is None else g * weights[n].detach())
                for n, g in zip(names, grads)}


def _drop_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _NORMS):
            setattr(module, name, nn.Identity())
        else:
            _drop_norms(child)


def synflow_scores(model: nn.Module, input_shape: tuple[int, ...], mask: Mask | None = None) -> Scores:
    """One SynFlow scoring: ``S = (dR/dw) * w`` (non-negative) on the "linearised" network, float64.

    R is the sum of the logits of an all-ones input of ``input_shape`` (C, H, W: the dataset's image
    shape) through a copy of the model with every parameter replaced by |w| and masked weights zero.
    No batch-norm effect: the copy runs in eval mode with every normalisation layer (BatchNorm,
    GroupNorm / instance norm, LayerNorm) replaced by the identity (at initialisation their affine
    parts are the identity anyway; GroupNorm's per-sample standardisation would break the positive
    flow). The model is not modified. Scores are float64 on the model's device.
    """
    return _SynFlowNet(model).scores(tuple(input_shape), mask)


def _normalised(scores: Scores) -> Scores:
    """Scores divided by their largest value (float64), so ``masks.prune``'s float32 cast neither
    overflows nor flushes the large ones (SynFlow's products of |w| over many layers span many decades)."""
    top = max(float(s.max()) for s in scores.values()) or 1.0
    return {n: s / top for n, s in scores.items()}


def synflow_prune(model: nn.Module, mask: Mask | None, *, total_round: int, fraction: float, scope: str,
                  input_shape: tuple[int, ...], output_name: str | None = None, output_fraction: float = -1.0,
                  iterations: int = 100) -> Mask:
    """Iterative SynFlow: the mask of round ``total_round``'s target, reached in ``iterations`` re-scorings.

    At iteration k of n, :func:`dpcore.masks.prune` keeps the fraction ``(target / total) ** (k / n)`` of
    every group's weights (``total_round * k / n`` rounds of ``fraction``: the exponential schedule, for
    the global group as for a layer-scope layer or a separately pruned output layer), scored by
    :func:`synflow_scores` with the current mask applied. The last iteration lands exactly on the
    target IMP's round ``total_round`` has. ``mask`` None means the full mask. The model is unchanged.
    """
    iterations = _check_iterations(iterations, "synflow")
    mask = full_mask(model) if mask is None else {n: m.clone() for n, m in mask.items()}
    flow = _SynFlowNet(model)
    shape = tuple(input_shape)
    for k in range(1, iterations + 1):
        rounds = total_round if k == iterations else total_round * k / iterations
        scores = _normalised(flow.scores(shape, mask))
        mask = prune(scores, mask, total_round=rounds, fraction=fraction, scope=scope, output_name=output_name,
                     output_fraction=output_fraction)
    return mask


# ------------------------------------------------------------------------------------------ entry point
def one_shot_prune(method: str, model: nn.Module, mask: Mask | None, batches: Sequence[Batch] | None = None, *,
                   total_round: int, fraction: float, scope: str, output_name: str | None = None,
                   output_fraction: float = -1.0, iterations: int = 100, temperature: float = 200.0,
                   input_shape: tuple[int, ...] | None = None) -> Mask:
    """The mask ``method`` ("snip", "grasp", "synflow") gives, scored from the model's CURRENT weights
    (pass the model at initialisation) and pruned by :func:`dpcore.masks.prune` to round ``total_round``'s
    target with IMP's options (``fraction``, ``scope``, ``output_fraction``).

    ``batches``: real ``(x, y)`` batches of model input (needed by snip and grasp, their gradients summed;
    synflow ignores them except to read the input shape when ``input_shape`` is not given).
    ``output_name`` defaults to the model's output layer (as :func:`dpcore.masks.magnitude_prune`).
    ``iterations``: synflow's re-scorings; ``temperature``: grasp's logit temperature. ``mask`` None:
    the full mask. Returns the new mask (on the devices of ``mask``).
    """
    if method not in METHODS:
        raise ConfigError(f"pruning at init: unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    iterations = _check_iterations(iterations, method)
    if output_name is None:
        output_name = output_layer_name(model)
    mask = full_mask(model) if mask is None else mask
    kw = dict(total_round=total_round, fraction=fraction, scope=scope, output_name=output_name,
              output_fraction=output_fraction)
    if method == "synflow":
        if input_shape is None:
            if not batches:
                raise ConfigError("pruning at init 'synflow' needs the input shape; pass input_shape=dataset.shape "
                                  "(or one batch to read it from)")
            input_shape = tuple(batches[0][0].shape[1:])
        return synflow_prune(model, mask, input_shape=input_shape, iterations=iterations, **kw)
    pairs = _check_batches(batches, method)
    xs, ys = [b[0] for b in pairs], [b[1] for b in pairs]
    if method == "snip":
        scores = snip_scores(model, xs, ys, mask=mask)
    else:
        scores = grasp_scores(model, xs, ys, temperature=temperature, mask=mask)
    return prune(scores, mask, **kw)
