"""The real-data schedule: milestones and the linear warm-up (train.warmup), and what they do to a run's id."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpcore.engine import run_identity
from dpcore.profiles import load_profile
from dpcore.training import Schedule, train


def test_warmup_rises_linearly_then_holds_and_milestones_still_apply():
    s = Schedule(optimizer="sgd", lr=0.1, epochs=4, batch_size=8, milestones=(3,), warmup_steps=4)
    assert [round(s.lr_at(0, k), 6) for k in range(6)] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]
    assert s.lr_at(3, 100) == pytest.approx(0.01)
    assert Schedule(optimizer="sgd", lr=0.1, epochs=1, batch_size=8).lr_at(0, 0) == 0.1  # no warm-up


def test_training_uses_the_warmup_lr_per_step():
    seen = []

    class Probe(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    class S(Schedule):
        def make_optimizer(self, params):
            return Probe(params, lr=self.lr)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    train(model, x, y, schedule=S(optimizer="sgd", lr=0.2, epochs=2, batch_size=4, warmup_steps=3), seed=0)
    assert seen == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])


def test_warmup_is_part_of_a_run_id_only_when_set(tiny_profile):
    base, _ = load_profile(str(tiny_profile))
    zero, _ = load_profile(str(tiny_profile), ["train.warmup=0"])
    one, _ = load_profile(str(tiny_profile), ["train.warmup=1"])
    ids = [run_identity(c, "imp", 0, torch.device("cpu")) for c in (base, zero, one)]
    assert ids[0] == ids[1] and "warmup" not in ids[0]["train"]
    assert ids[2]["train"]["warmup"] == 1
