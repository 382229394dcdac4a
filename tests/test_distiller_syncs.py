"""The distillers' iterations make no host syncs: N and 2N iterations record the same sync-inducing
calls (see ``tests/sync_guard.py``); only set-up, the ~200 progress reads and the final read may sync.

DM and MTT read their loss at every progress event (the divergence check), ~200 per run whatever its
length: with N = 200 both runs have exactly 200 events, so the reads cancel out too.
"""

from __future__ import annotations

import pytest
import torch

from dpcore.data.dataset import Dataset
from dpcore.models import build_model
from dpcore.synthetic import DISTILLERS
from sync_guard import per_step_syncs, record_syncs
from conftest import template_dataset

C, PER_CLASS, SHAPE = 4, 100, (1, 8, 8)
N = 200  # iterations (>= the 200 progress events: see the module docstring)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return template_dataset(C, PER_CLASS, SHAPE)


def lenet():
    return build_model("lenet-300-100", num_classes=C, in_shape=SHAPE)


def small_convnet():
    return build_model("convnet", num_classes=C, in_shape=SHAPE, width=4, depth=1)


def _dm(ds, **params):
    def run(n: int):
        return DISTILLERS["dm"].distill(ds, ipc=2, model_factory=lenet, seed=0, device="cpu",
                                        params={"iterations": n, "batch_real": 80, **params},
                                        progress=lambda *a: None)
    return run


def test_dm_folds_at_these_settings(ds):
    """320 real images per iteration > LeNet's 300 first-layer units: DM folds the augmentation."""
    from dpcore.synthetic.dm import RealMeans
    from dpcore.synthetic.dsa import make_dsa

    take = torch.full((C,), 80)
    assert RealMeans(ds, take, torch.device("cpu"), make_dsa(True, "color"), 0, lenet()).fold
    assert not RealMeans(ds, take, torch.device("cpu"), make_dsa(True, "color"), 0, small_convnet()).fold


@pytest.mark.parametrize("params", [
    {"dsa": True},  # LeNet: the augmentation folded into the first layer
    {"dsa": True, "embedder": "convnet:width=4,depth=1"},  # a conv embedder: the real batch augmented
    {"dsa": False},
], ids=["dsa-folded", "dsa-conv", "no-dsa"])
def test_dm_iterations_do_not_sync(ds, params):
    assert per_step_syncs(_dm(ds, **params), N) == {}


def test_the_guard_sees_a_per_iteration_read(ds):
    """The check can fail: a progress callback that reads a tensor every iteration is caught."""
    def run(n: int):
        return DISTILLERS["dm"].distill(ds, ipc=2, model_factory=lenet, seed=0, device="cpu",
                                        params={"iterations": n, "batch_real": 16, "dsa": False},
                                        should_stop=lambda: bool(torch.zeros(())))  # a read per iteration
    assert per_step_syncs(run, 5)["__bool__"] == 5


def test_mtt_iterations_do_not_sync(ds, tmp_path):
    params = {"syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2, "num_experts": 2, "expert_train_epochs": 3,
              "expert_batch": 32, "lr_img": 100.0, "lr_teacher": 0.05, "dsa": True, "batch_syn": 3}

    def run(n: int):
        return DISTILLERS["mtt"].distill(ds, ipc=2, model_factory=lenet, seed=0, device="cpu",
                                         params={**params, "iterations": n}, workdir=tmp_path,
                                         progress=lambda *a: None)

    run(1)  # train the experts first: both measured runs then read them from disk alike
    assert per_step_syncs(run, N) == {}


def test_gm_iterations_do_not_sync(ds):
    def run(n: int):  # no progress callback: GM then reads nothing until the end
        return DISTILLERS["gm"].distill(ds, ipc=2, model_factory=small_convnet, seed=0, device="cpu",
                                        params={"iterations": n, "batch_real": 8, "outer_loop": 2,
                                                "inner_loop": 1, "batch_train": 4, "dsa": True})
    assert per_step_syncs(run, 3) == {}


def test_gm_reads_its_loss_only_at_progress_events(ds):
    seen: list = []

    def run(n: int):
        return DISTILLERS["gm"].distill(ds, ipc=1, model_factory=small_convnet, seed=0, device="cpu",
                                        params={"iterations": n, "batch_real": 4, "outer_loop": 1,
                                                "inner_loop": 1, "dsa": False},
                                        progress=lambda *a: seen.append(a))
    calls = record_syncs(lambda: run(4))
    assert len(seen) == 5 and calls["__float__"] == 4  # one read per event, none elsewhere
