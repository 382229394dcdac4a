"""Train a model on a synthetic set and test it on the real test split.

This is the one recipe for training on a synthetic set (MTT's evaluation protocol, as the engine's
distilled inner loop uses it): SGD with momentum, weight decay, the lr divided by 10 at half the
epochs, and per-sample DSA on every batch. The lr is the set's learned lr when it has one and
``use_learned_lr`` is on, else the configured lr.

:func:`train_on_synthetic` is what ``Run.train_synthetic`` in the engine does (same seeds, same
augmentation draws), so the engine can call it; :func:`evaluate_synthetic` adds building the
model and testing it, for ``dptui distill --evaluate``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn

from dpcore.augment import DSA
from dpcore.training import Augment, EpochCallback, Schedule, Stopwatch, TrainOutcome, derive_seed, evaluate, train

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.config import SyntheticConfig
    from dpcore.data.dataset import Dataset
    from dpcore.masks import Mask
    from dpcore.synthetic.base import SyntheticSet


def synthetic_lr(sc: "SyntheticConfig", syn: "SyntheticSet") -> float:
    """The set's learned lr when it has one and ``use_learned_lr`` is on, else ``sc.lr``."""
    return float(syn.lr) if (sc.use_learned_lr and syn.lr) else float(sc.lr)


def synthetic_schedule(sc: "SyntheticConfig", syn: "SyntheticSet") -> Schedule:
    return Schedule(optimizer="sgd", lr=synthetic_lr(sc, syn), epochs=sc.epochs, batch_size=sc.batch_size,
                    momentum=sc.momentum, weight_decay=sc.weight_decay, milestones=(sc.epochs // 2,), gamma=0.1)


def dsa_augment(enabled: bool) -> Augment | None:
    """Per-sample DSA (as MTT trains on its sets), one seed per batch drawn from the training's generator."""
    if not enabled:
        return None
    dsa = DSA(batchwise=False)
    return lambda xb, gen: dsa(xb, seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))


@contextlib.contextmanager
def compiled_forward(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model``'s forward through ``torch.compile`` inside the block (same parameters, names and
    results up to float rounding); falls back to eager, with a warning, if compiling fails (e.g. no
    C++ compiler). The model is left as it was afterwards."""
    if not enabled:
        yield model
        return
    eager = model.forward
    fn: list[Callable] = [torch.compile(eager)]

    def forward(*args, **kwargs):
        try:
            return fn[0](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure: run eagerly instead
            if fn[0] is eager:
                raise
            warnings.warn(f"torch.compile failed ({type(err).__name__}); training eagerly", RuntimeWarning, stacklevel=2)
            fn[0] = eager
            return eager(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield model
    finally:
        del model.forward


def train_on_synthetic(model: nn.Module, syn: "SyntheticSet", sc: "SyntheticConfig", *, seed: int,
                       mask: "Mask | None" = None, on_epoch: EpochCallback | None = None,
                       should_stop: Callable[[], bool] | None = None, compile: bool = False) -> TrainOutcome:
    """Train ``model`` in place (from its current state) on ``syn`` with the ``[synthetic]`` settings.

    ``compile=True`` runs the forward through ``torch.compile`` (faster for long trainings on a CPU).
    """
    device = next(model.parameters()).device
    x, y = syn.images.to(device), syn.labels.to(device)
    with compiled_forward(model, compile):
        return train(model, x, y, schedule=synthetic_schedule(sc, syn), seed=seed, mask=mask,
                     augment=dsa_augment(sc.dsa), on_epoch=on_epoch, should_stop=should_stop)


@dataclass(frozen=True)
class Evaluation:
    test_acc: float
    test_loss: float
    train_s: float
    test_s: float
    lr: float
    epochs: int
    steps: int


def evaluate_synthetic(syn: "SyntheticSet", dataset: "Dataset", model_factory: Callable[[], nn.Module],
                       sc: "SyntheticConfig", *, seed: int = 0, eval_batch_size: int = 2048,
                       on_epoch: EpochCallback | None = None,
                       should_stop: Callable[[], bool] | None = None, compile: bool = False) -> Evaluation:
    """Build a fresh model (init seeded by ``seed``), train it on ``syn``, test it on the real test split."""
    torch.manual_seed(derive_seed(seed, "init"))
    model = model_factory().to(dataset.device)
    out = train_on_synthetic(model, syn, sc, seed=derive_seed(seed, "synthetic", 0), on_epoch=on_epoch,
                             should_stop=should_stop, compile=compile)
    watch = Stopwatch(dataset.device)
    acc, loss = evaluate(model, dataset.x_test, dataset.y_test, prepare=dataset.prepare, batch_size=eval_batch_size)
    return Evaluation(test_acc=acc, test_loss=loss, train_s=out.train_s, test_s=watch.elapsed(),
                      lr=synthetic_lr(sc, syn), epochs=sc.epochs, steps=out.steps)
