"""Instability analysis (Frankle et al. 2020, linear mode connectivity) of one mask and rewind point.

Two copies of the masked net start from the same rewind state and train on real data with different
SGD noise: a different data order (and with it the augmentation draws, which come per batch);
everything else (mask, schedule, start, augmentation settings) is identical. The straight line
between their trained weights is then evaluated at evenly spaced alphas (evaluation only).

Definitions (accuracies are fractions of the test set):
  instability = max over alpha in [0, 1] of  mean(acc(0), acc(1)) - acc(alpha)
      The ends are part of the max, so it is >= |acc(0) - acc(1)| / 2 >= 0: never negative, never
      clipped. (Frankle et al.'s "error barrier height", in accuracy instead of error.)
  barrier = max over alpha of  (1 - alpha) acc(0) + alpha acc(1) - acc(alpha)
      The drop below the straight line between the ends; also >= 0 (it is 0 at the ends), and free
      of the |acc(0) - acc(1)| / 2 floor that unequal ends put under ``instability``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..data.dataset import Dataset
from ..masks import Mask
from ..training import (Augment, EpochCallback, FastPath, Schedule, Stopped, Stopwatch, derive_seed, evaluate, restore,
                        snapshot, train)

State = dict[str, Tensor]


def alpha_grid(n: int) -> list[float]:
    """``n`` evenly spaced points from 0 to 1, both ends included (exact 0.0 and 1.0)."""
    if n < 2:
        raise ValueError("an interpolation needs at least 2 alphas")
    return [i / (n - 1) for i in range(n)]


def interpolate(a: State, b: State, alpha: float) -> State:
    """``(1 - alpha) a + alpha b`` for every float tensor (integer buffers are taken from ``a``).

    ``torch.lerp`` is exact at both ends and where ``a == b``, so alpha 0 and 1 give back the two
    models bit for bit and two identical models interpolate to themselves.
    """
    return {k: torch.lerp(v, b[k], alpha) if v.is_floating_point() else v.clone() for k, v in a.items()}


def instability_of(alphas: list[float], acc: list[float]) -> float:
    ends = (acc[0] + acc[-1]) / 2
    return max(ends - a for a in acc)


def barrier_of(alphas: list[float], acc: list[float]) -> float:
    return max((1 - t) * acc[0] + t * acc[-1] - a for t, a in zip(alphas, acc))


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, prepare: Callable[[Tensor], Tensor], batch_size: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``x``.

    Returns the number of BatchNorm layers touched (0: nothing to do, the model is unchanged).
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # equal weight for every batch
    was_training = model.training
    model.train()
    for i in range(0, x.shape[0], batch_size):
        model(prepare(x[i: i + batch_size]))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


@dataclass
class Curve:
    alphas: list[float]
    test_acc: list[float]
    test_loss: list[float]

    @property
    def instability(self) -> float:
        return instability_of(self.alphas, self.test_acc)

    @property
    def barrier(self) -> float:
        return barrier_of(self.alphas, self.test_acc)


@dataclass
class Hooks:
    """Progress plumbing: ``stage`` before each training / the sweep, ``epoch`` per epoch or alpha."""

    stage: Callable[[str], None] = lambda name: None
    epoch: EpochCallback | None = None
    should_stop: Callable[[], bool] = lambda: False


def interpolation_curve(model: nn.Module, a: State, b: State, ds: Dataset, *, alphas: list[float],
                        eval_batch_size: int = 2048, bn_recompute: bool = False,
                        hooks: Hooks | None = None) -> Curve:
    """Test accuracy and loss of the interpolated weights at each alpha (the model ends at the last one)."""
    hooks = hooks or Hooks()
    acc, loss = [], []
    for i, alpha in enumerate(alphas):
        if hooks.should_stop():
            raise Stopped
        restore(model, interpolate(a, b, alpha))
        if bn_recompute:
            recompute_bn(model, ds.x_train, ds.prepare, eval_batch_size)
        ac, lo = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare, batch_size=eval_batch_size)
        acc.append(ac)
        loss.append(lo)
        if hooks.epoch is not None:
            hooks.epoch(i + 1, len(alphas), torch.tensor(lo))
    return Curve(list(alphas), acc, loss)


@dataclass
class Instability:
    curve: Curve
    end_acc: tuple[float, float]  # the two trained copies evaluated as they are
    end_loss: tuple[float, float]
    train_s: tuple[float, float]
    eval_s: float
    seeds: tuple[int, int]
    states: tuple[State, State] = field(repr=False)


def copy_seeds(seed: int, same_order: bool = False) -> tuple[int, int]:
    """The two copies' training seeds (data order); equal when ``same_order`` (the zero-instability check)."""
    a = derive_seed(seed, "copy", 0)
    return (a, a) if same_order else (a, derive_seed(seed, "copy", 1))


def instability_analysis(model: nn.Module, start: State, mask: Mask, ds: Dataset, *, schedule: Schedule,
                         seed: int, start_step: int = 0, augment: Augment | None = None, alphas: int = 11,
                         bn_recompute: bool = False, same_order: bool = False, eval_batch_size: int = 2048,
                         hooks: Hooks | None = None, fast: FastPath | None = None) -> Instability:
    """Train two copies of ``model`` masked by ``mask`` from ``start`` (global step ``start_step``) and
    evaluate the linear path between them. ``model`` is left holding the last alpha's weights."""
    hooks = hooks or Hooks()
    device = next(model.parameters()).device
    seeds = copy_seeds(seed, same_order)
    states, times, end_acc, end_loss = [], [], [], []
    for copy, s in enumerate(seeds):
        hooks.stage("instability")
        restore(model, start)
        out = train(model, ds.x_train, ds.y_train, schedule=schedule, seed=s, prepare=ds.prepare, mask=mask, fast=fast,
                    augment=augment, start_step=start_step, on_epoch=hooks.epoch, should_stop=hooks.should_stop)
        ac, lo = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare, batch_size=eval_batch_size)
        states.append(snapshot(model))
        times.append(out.train_s)
        end_acc.append(ac)
        end_loss.append(lo)
    hooks.stage("interpolate")
    watch = Stopwatch(device)
    curve = interpolation_curve(model, states[0], states[1], ds, alphas=alpha_grid(alphas),
                                eval_batch_size=eval_batch_size, bn_recompute=bn_recompute, hooks=hooks)
    return Instability(curve, (end_acc[0], end_acc[1]), (end_loss[0], end_loss[1]), (times[0], times[1]),
                       watch.elapsed(), seeds, (states[0], states[1]))
