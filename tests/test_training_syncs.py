"""No host syncs inside the per-step loops of train(), evaluate() and the synthetic inner loop.

Counted on the CPU with ``sync_guard`` (a loop of 2n steps must make exactly the sync-inducing calls of a
loop of n steps): data order and augmentation drawn on the device, losses kept there, evaluation read once.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from dpcore.augment import crop_flip
from dpcore.config import SyntheticConfig
from dpcore.data.dataset import Dataset
from dpcore.masks import full_mask, magnitude_prune
from dpcore.models import build_model
from dpcore.synthetic import SyntheticSet
from dpcore.synthetic.evaluate import train_on_synthetic
from dpcore.training import FastPath, Schedule, evaluate, train
from sync_guard import SyncRecorder, per_step_syncs, record_syncs

SHAPE, C, BATCH, PER_EPOCH = (3, 8, 8), 4, 8, 3
pytestmark = pytest.mark.usefixtures("one_thread")


def dataset(n: int = BATCH * PER_EPOCH) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return Dataset("t", x, y, x, y, C, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), augment="crop_flip")


def masked_convnet():
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=C, in_shape=SHAPE, width=4, depth=1)
    mask = magnitude_prune(model, full_mask(model), total_round=1, fraction=0.5, scope="global")
    return model, mask


def _in_grad_scaler() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith("torch/amp/grad_scaler.py"):
            return True
        frame = frame.f_back
    return False


class ScalerAwareRecorder(SyncRecorder):
    """GradScaler moves its scale and found-inf flags to the training device with ``.to(device,
    non_blocking=True)``: on a CPU run that reads like a copy to the host, on CUDA it is no copy at all.
    Only those moves are let through; an ``item()`` in GradScaler (its path for unfused optimisers) counts."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "to" and _in_grad_scaler():
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def scaler_aware_per_step_syncs(run, n: int) -> Counter:
    def record(k):
        with ScalerAwareRecorder() as rec:
            run(k)
        return rec.calls
    once, twice = record(n), record(2 * n)
    return Counter({k: twice[k] - once[k] for k in twice if twice[k] > once[k]})


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_real_data_training_makes_no_per_step_syncs(optimizer, precision):
    ds = dataset()
    model, mask = masked_convnet()
    seen = []

    def run(epochs: int):
        train(model, ds.x_train, ds.y_train, schedule=Schedule(optimizer, 0.01, epochs, BATCH), seed=0,
              prepare=ds.prepare, mask=mask, augment=lambda xb, gen: crop_flip(xb, 2, generator=gen),
              on_epoch=lambda e, n, loss: seen.append(loss), should_stop=lambda: False,
              fast=FastPath(precision=precision))

    count = scaler_aware_per_step_syncs if precision == "fp16" else per_step_syncs
    assert count(run, 2) == {}
    assert len(seen) == 2 + 4 and all(loss.dim() == 0 for loss in seen)  # the losses stayed tensors


def test_the_sync_guard_sees_a_per_step_sync():
    """The check has teeth: an augmentation reading one value per batch is caught."""
    ds = dataset()
    model, mask = masked_convnet()

    def run(epochs: int):
        train(model, ds.x_train, ds.y_train, schedule=Schedule("sgd", 0.01, epochs, BATCH), seed=0,
              prepare=ds.prepare, mask=mask, augment=lambda xb, gen: xb * float(xb.mean()))

    assert per_step_syncs(run, 2) == {"__float__": 2 * PER_EPOCH}


def test_synthetic_inner_loop_with_dsa_makes_no_per_step_syncs():
    g = torch.Generator().manual_seed(1)
    syn = SyntheticSet(torch.randn(2 * C, *SHAPE, generator=g), torch.arange(C).repeat_interleave(2), lr=0.01)
    model, mask = masked_convnet()

    def run(epochs: int):
        sc = SyntheticConfig(epochs=epochs, batch_size=3, dsa=True)  # 3 batches per epoch (the last one short)
        out = train_on_synthetic(model, syn, sc, seed=0, mask=mask)
        assert out.steps == 3 * epochs

    assert per_step_syncs(run, 3) == {}


def test_evaluation_reads_once():
    ds = dataset(BATCH * 8)
    model, _ = masked_convnet()

    def run(batches: int):
        n = batches * BATCH
        return evaluate(model, ds.x_test[:n], ds.y_test[:n], prepare=ds.prepare, batch_size=BATCH)

    assert per_step_syncs(run, 4) == {}
    assert sum(record_syncs(lambda: run(4)).values()) == 1  # the one read at the end
    acc, loss = run(8)
    assert 0 <= acc <= 1 and loss > 0
