"""Train a model on a synthetic set and test it on the real test split.

This is the one recipe for training on a synthetic set (MTT's evaluation protocol, as the engine's
distilled inner loop uses it): SGD with momentum, weight decay, the lr divided by 10 at half the
epochs, and per-sample DSA on every batch. The lr is the set's learned lr when it has one and
``use_learned_lr`` is on, else the configured lr. The loop is fixed-shape, so on a CUDA device each whole step
runs as one CUDA graph replay (``FastPath.cuda_graphs``, :mod:`dpcore.graphed`).

:func:`train_on_synthetic` is what ``Run.train_synthetic`` in the engine does (same seeds, same
augmentation draws), so the engine can call it; :func:`evaluate_synthetic` adds building the
model and testing it, for ``dptui distill --evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from dpcore.augment import DSA
from dpcore.training import (Augment, EpochCallback, FastPath, Schedule, Stopwatch, TrainOutcome, derive_seed,
                             evaluate, train)

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.config import SyntheticConfig
    from dpcore.data.dataset import Dataset
    from dpcore.masks import Mask
    from dpcore.synthetic.set import SyntheticSet


def synthetic_lr(sc: "SyntheticConfig", syn: "SyntheticSet") -> float:
    """The set's learned lr when it has one and ``use_learned_lr`` is on, else ``sc.lr``."""
    return float(syn.lr) if (sc.use_learned_lr and syn.lr) else float(sc.lr)


def synthetic_schedule(sc: "SyntheticConfig", syn: "SyntheticSet") -> Schedule:
    return Schedule(optimizer="sgd", lr=synthetic_lr(sc, syn), epochs=sc.epochs, batch_size=sc.batch_size,
                    momentum=sc.momentum, weight_decay=sc.weight_decay, milestones=(sc.epochs // 2,), gamma=0.1)


def dsa_augment(enabled: bool, seed: int = 0) -> Augment | None:
    """Per-sample DSA (as MTT trains on its sets): each batch's op from a host RNG seeded by ``seed``, its
    parameters from the training's generator on the batch's device (no host sync per step)."""
    if not enabled:
        return None
    return DSA(batchwise=False).sampler(derive_seed(seed, "dsa"))


def synthetic_fast_path(fast: FastPath | None) -> FastPath:
    """``fast`` (default: plain fp32, eager), with whole-step CUDA graphs for the fixed-shape loop (on CUDA)."""
    return replace(fast or FastPath(), cuda_graphs=True)


def train_on_synthetic(model: nn.Module, syn: "SyntheticSet", sc: "SyntheticConfig", *, seed: int,
                       mask: "Mask | None" = None, on_epoch: EpochCallback | None = None,
                       should_stop: Callable[[], bool] | None = None, fast: FastPath | None = None) -> TrainOutcome:
    """Train ``model`` in place (from its current state) on ``syn`` with the ``[synthetic]`` settings.

    ``fast``: how the loop runs (:class:`~dpcore.training.FastPath`; the engine passes the run's). On CUDA each
    step is a CUDA graph replay. Warm-up and capture time is ``compile_s`` of the outcome.
    """
    device = next(model.parameters()).device
    x, y = syn.images.to(device), syn.labels.to(device)
    return train(model, x, y, schedule=synthetic_schedule(sc, syn), seed=seed, mask=mask,
                 augment=dsa_augment(sc.dsa, seed), on_epoch=on_epoch, should_stop=should_stop,
                 fast=synthetic_fast_path(fast))


@dataclass(frozen=True)
class Evaluation:
    test_acc: float
    test_loss: float
    train_s: float
    test_s: float
    lr: float
    epochs: int
    steps: int
    compile_s: float = 0.0  # warm-up of the compiled training step, apart from train_s


def evaluate_synthetic(syn: "SyntheticSet", dataset: "Dataset", model_factory: Callable[[], nn.Module],
                       sc: "SyntheticConfig", *, seed: int = 0, eval_batch_size: int = 2048,
                       on_epoch: EpochCallback | None = None,
                       should_stop: Callable[[], bool] | None = None, fast: FastPath | None = None) -> Evaluation:
    """Build a fresh model (init seeded by ``seed``), train it on ``syn``, test it on the real test split."""
    torch.manual_seed(derive_seed(seed, "init"))
    model = model_factory().to(dataset.device)
    out = train_on_synthetic(model, syn, sc, seed=derive_seed(seed, "synthetic", 0), on_epoch=on_epoch,
                             should_stop=should_stop, fast=fast)
    watch = Stopwatch(dataset.device)
    acc, loss = evaluate(model, dataset.x_test, dataset.y_test, prepare=dataset.prepare, batch_size=eval_batch_size,
                         fast=replace(fast, compile="off") if fast is not None else None)
    return Evaluation(test_acc=acc, test_loss=loss, train_s=out.train_s, test_s=watch.elapsed(),
                      lr=synthetic_lr(sc, syn), epochs=sc.epochs, steps=out.steps, compile_s=out.compile_s)
