"""Training and evaluation on whole-tensor datasets: one hot loop, no per-sample Python.

Data order and augmentation come from explicit generators seeded per training, so a training is a
pure function of (start state, mask, data, schedule, seed) on the CPU.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import Mask, MaskApplier

Augment = Callable[[Tensor, torch.Generator], Tensor]
EpochCallback = Callable[[int, int, Tensor], None]  # (epochs done, total epochs, last batch loss)


class Stopped(Exception):
    """Raised inside a training when the stop flag is set."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs and machines."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer, cloned (a rewind point)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    model.load_state_dict(state, strict=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time with the device synchronised at start and stop."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class Schedule:
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass
class TrainOutcome:
    train_s: float
    steps: int
    capture: dict[str, Tensor] | None = None  # state at capture_step, if asked for
    capture_s: float | None = None  # training time spent before the capture


def train(model: nn.Module, x: Tensor, y: Tensor, *, schedule: Schedule, seed: int,
          prepare: Callable[[Tensor], Tensor] = lambda t: t, mask: Mask | None = None,
          augment: Augment | None = None, start_step: int = 0, capture_step: int | None = None,
          on_epoch: EpochCallback | None = None, should_stop: Callable[[], bool] | None = None) -> TrainOutcome:
    """Train ``model`` in place from global step ``start_step`` to the end of the schedule.

    Epoch ``e`` always uses the permutation drawn from ``(seed, e)``, so starting at a rewind step
    continues the same data order. Masked weights are zeroed after every step.
    """
    device = next(model.parameters()).device
    n = x.shape[0]
    batch = min(schedule.batch_size, n)
    per_epoch = (n + batch - 1) // batch
    apply_mask = MaskApplier(model, mask) if mask is not None else None
    if apply_mask:
        apply_mask()
    opt = schedule.make_optimizer(model.parameters())
    aug_gen = torch.Generator().manual_seed(derive_seed(seed, "augment", start_step))
    model.train()
    capture = None
    capture_s = None
    watch = Stopwatch(device)
    step = start_step
    if capture_step is not None and capture_step == start_step:
        capture, capture_s = snapshot(model), 0.0
    for epoch in range(start_step // per_epoch, schedule.epochs):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))).to(device)
        loss = None
        for b in range(step - epoch * per_epoch, per_epoch):
            if should_stop is not None and should_stop():
                raise Stopped
            idx = order[b * batch: (b + 1) * batch]
            xb = prepare(x[idx])
            if augment is not None:
                xb = augment(xb, aug_gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if apply_mask:
                apply_mask()
            step += 1
            if capture_step is not None and step == capture_step:
                capture, capture_s = snapshot(model), watch.elapsed()
        if on_epoch is not None and loss is not None:
            on_epoch(epoch + 1, schedule.epochs, loss.detach())
    return TrainOutcome(train_s=watch.elapsed(), steps=step, capture=capture, capture_s=capture_s)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, prepare: Callable[[Tensor], Tensor] = lambda t: t,
             batch_size: int = 2048) -> tuple[float, float]:
    """(accuracy as a fraction, mean cross-entropy) over the whole split."""
    model.eval()
    correct = torch.zeros((), device=y.device)
    loss = torch.zeros((), device=y.device)
    for i in range(0, x.shape[0], batch_size):
        logits = model(prepare(x[i: i + batch_size]))
        yb = y[i: i + batch_size]
        correct += (logits.argmax(1) == yb).sum()
        loss += F.cross_entropy(logits, yb, reduction="sum")
    model.train()
    n = x.shape[0]
    return float(correct) / n, float(loss) / n


def steps_per_epoch(n: int, batch_size: int) -> int:
    batch = min(batch_size, n)
    return (n + batch - 1) // batch
