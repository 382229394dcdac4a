"""Shared fixtures: a tiny learnable dataset written as .npz and a tiny profile that runs in seconds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# Caches outside the run store (the ZCA fits) go to a folder of the test session, never the user's home.
os.environ.setdefault("DPTUI_CACHE_DIR", tempfile.mkdtemp(prefix="dptui-test-cache-"))


def make_npz(path: Path, classes: int = 4, per_class: int = 48, size: int = 8, seed: int = 0) -> Path:
    """Class templates plus noise: learnable in a few epochs, so accuracies mean something."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(classes, size, size))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), n)
        x = templates[y] * 0.6 + rng.integers(0, 256, size=(len(y), size, size)) * 0.4
        return x.astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(per_class)
    x_test, y_test = split(per_class // 4)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


TINY_PROFILE = """
[experiment]
name = "tiny"
[data]
dataset = "npz"
path = "{npz}"
[model]
name = "lenet-300-100"
[train]
optimizer = "adam"
lr = 0.002
batch_size = 32
epochs = 2
[synthetic]
method = "dm"
ipc = 2
epochs = 4
batch_size = 16
[synthetic.params]
iterations = 3
batch_real = 16
[prune]
methods = ["imp", "distilled", "random"]
rounds = 3
validate = "every"
[run]
seeds = [0]
device = "cpu"
jobs = 1  # one run at a time, in the test's process (tests of run.jobs > 1 set it)
"""


def template_dataset(classes: int, per_class: int, shape: tuple[int, int, int]):
    """An in-memory :class:`~dpcore.data.dataset.Dataset` of class templates plus noise (uint8, shuffled)."""
    from dpcore.data.dataset import Dataset

    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(per_class)
    proto = torch.randint(0, 256, (classes, *shape), generator=g).float()
    x = (0.6 * proto[y] + 0.4 * torch.randint(0, 256, (len(y), *shape), generator=g).float()).to(torch.uint8)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return Dataset("tiny", x, y, x[:40], y[:40], classes, (0.5,), (0.25,))


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return make_npz(tmp_path / "tiny.npz")


@pytest.fixture
def tiny_profile(tmp_path: Path, tiny_npz: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PROFILE.format(npz=tiny_npz))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contend on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
