"""Synthetic sets: DM, random subset, files and the distillation cache (tiny CPU data)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dpcore.data.dataset import Dataset
from dpcore.errors import ConfigError, DataError
from dpcore.models import build_model
from dpcore.synthetic import (
    DISTILLERS,
    SyntheticSet,
    get_distiller,
    get_or_distill,
    load_synthetic,
    save_synthetic,
    synthetic_key,
)

C, PER_CLASS, SHAPE = 10, 20, (1, 8, 8)
MODEL = {"name": "lenet-300-100", "options": {}}


def _dataset(whitened: bool = False) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(PER_CLASS)
    proto = torch.randint(0, 256, (C, *SHAPE), generator=g).float()
    noise = torch.randint(0, 256, (C * PER_CLASS, *SHAPE), generator=g).float()
    x = (0.6 * proto[y] + 0.4 * noise).to(torch.uint8)
    perm = torch.randperm(len(y), generator=g)  # classes interleaved, as in real data
    x, y = x[perm], y[perm]
    return Dataset("tiny", x, y, x[:50], y[:50], C, (0.5,), (0.25,), whitened=whitened)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _dataset()


def _factory():
    return build_model("lenet-300-100", num_classes=C, in_shape=SHAPE)


def _dm(ds, *, ipc=2, seed=0, progress=None, should_stop=None, **params):
    params = {"batch_real": 20, "dsa": False, "iterations": 5, **params}
    return DISTILLERS["dm"].distill(
        ds, ipc=ipc, model_factory=_factory, seed=seed, device="cpu", params=params,
        progress=progress, should_stop=should_stop,
    )


# ------------------------------------------------------------------------------------------ DM


def test_dm_loss_falls(ds):
    losses: list[float] = []
    syn = _dm(ds, iterations=30, progress=lambda step, total, loss: losses.append(loss))
    assert losses[0] is None and len(losses) == 31  # progress(0, total, None) first
    first, last = np.mean(losses[1:6]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)
    assert syn.meta["final_loss"] == pytest.approx(losses[-1])
    assert syn.meta["iterations_done"] == 30


def test_dm_balanced_and_moved(ds):
    syn = _dm(ds, ipc=3, iterations=3, dsa=True)
    assert syn.images.shape == (3 * C, *SHAPE) and syn.images.dtype == torch.float32
    assert syn.labels.dtype == torch.int64
    assert torch.bincount(syn.labels, minlength=C).tolist() == [3] * C
    init = ds.prepare(ds.x_train[torch.tensor(syn.meta["init_indices"])])
    assert torch.equal(ds.y_train[torch.tensor(syn.meta["init_indices"])], syn.labels)  # init from own class
    assert not torch.allclose(init, syn.images)
    m = syn.meta
    assert m["method"] == "dm" and m["ipc"] == 3 and m["seed"] == 0 and m["distill_s"] > 0
    assert m["params"] == {**get_distiller("dm").defaults, "batch_real": 20, "dsa": True, "iterations": 3}
    assert syn.lr is None and "stopped" not in m


def test_dm_is_reproducible_by_seed(ds):
    a, b, c = _dm(ds, seed=1), _dm(ds, seed=1), _dm(ds, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_dm_should_stop_returns_partial(ds):
    calls = []
    syn = _dm(ds, iterations=50, should_stop=lambda: len(calls) > 3 or calls.append(1))
    assert syn.meta["stopped"] is True and syn.meta["iterations_done"] == 4
    assert syn.images.shape[0] == 2 * C


def test_unknown_params_and_method(ds):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) lr_image; allowed: batch_real, dsa, "):
        _dm(ds, lr_image=1.0)
    with pytest.raises(ConfigError, match="iterations"):
        _dm(ds, iterations="many")
    with pytest.raises(ConfigError, match="allowed: none"):
        DISTILLERS["random-subset"].distill(ds, ipc=1, model_factory=_factory, seed=0, device="cpu", params={"x": 1})
    with pytest.raises(ConfigError, match="allowed: dm, el2n, gm, mtt, random-subset"):
        get_distiller("mtt-online")
    with pytest.raises(DataError, match="class .* has only 20 training images but ipc=21"):
        _dm(ds, ipc=21)


# -------------------------------------------------------------------------------- random subset


def test_random_subset_balanced_and_seeded(ds):
    sub = DISTILLERS["random-subset"]
    a = sub.distill(ds, ipc=4, model_factory=_factory, seed=3, device="cpu", params={})
    b = sub.distill(ds, ipc=4, model_factory=_factory, seed=3, device="cpu", params={})
    c = sub.distill(ds, ipc=4, model_factory=_factory, seed=4, device="cpu", params={})
    assert torch.bincount(a.labels, minlength=C).tolist() == [4] * C
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.meta["indices"] != c.meta["indices"]
    idx = torch.tensor(a.meta["indices"])
    assert len(set(a.meta["indices"])) == 4 * C
    assert torch.equal(ds.y_train[idx], a.labels)
    assert torch.equal(ds.prepare(ds.x_train[idx]), a.images)


# ---------------------------------------------------------------------------------------- cache


class _Counting:
    def __init__(self, inner):
        self.inner, self.name, self.defaults, self.calls = inner, inner.name, inner.defaults, 0

    def distill(self, *args, **kwargs):
        self.calls += 1
        return self.inner.distill(*args, **kwargs)


def _cached(tmp_path, ds, **over):
    kw = dict(method="dm", ipc=1, model=MODEL, model_factory=_factory, seed=0, device="cpu",
              params={"iterations": 2, "batch_real": 20, "dsa": False})
    kw.update(over)
    return get_or_distill(tmp_path / "cache", ds, **kw)


def test_cache_hit_and_miss(tmp_path, ds, monkeypatch):
    counting = _Counting(DISTILLERS["dm"])
    monkeypatch.setitem(DISTILLERS, "dm", counting)
    a, cached_a = _cached(tmp_path, ds)
    b, cached_b = _cached(tmp_path, ds, params={"iterations": 2, "batch_real": 20, "dsa": False, "lr_img": 1})
    assert (cached_a, cached_b, counting.calls) == (False, True, 1)  # explicit default = same key
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert b.meta["distill_s"] == a.meta["distill_s"] and b.meta["key"] == a.meta["key"]
    entries = [p.name for p in (tmp_path / "cache").iterdir()]
    assert entries == [a.meta["key"]]  # no temp folder left behind

    c, cached_c = _cached(tmp_path, ds, params={"iterations": 3, "batch_real": 20, "dsa": False})
    assert not cached_c and counting.calls == 2 and c.meta["key"] != a.meta["key"]
    assert not torch.equal(a.images, c.images)


def test_cache_key_covers_every_input():
    base = dict(dataset_name="tiny", method="dm", ipc=1, model=MODEL, seed=0, params={}, whitened=False)
    k = synthetic_key(**base)
    assert len(k) == 16 and int(k, 16) >= 0
    assert synthetic_key(**{**base, "params": {"iterations": 1000, "lr_img": 1}}) == k  # defaults
    assert synthetic_key(**{**base, "model": {"name": "lenet-300-100"}}) == k  # flat form
    changed = [
        {"dataset_name": "tiny2"}, {"method": "random-subset"}, {"ipc": 2}, {"seed": 1}, {"whitened": True},
        {"params": {"lr_img": 0.5}}, {"params": {"dsa": False}},
        {"model": {"name": "convnet", "options": {"width": 8}}}, {"train_per_class": 500},
    ]
    keys = {synthetic_key(**{**base, **c}) for c in changed}
    assert len(keys) == len(changed) and k not in keys
    conv = {"name": "convnet", "options": {"width": 8}}
    assert synthetic_key(**{**base, "model": conv}) != synthetic_key(**{**base, "model": {**conv, "options": {"width": 16}}})
    assert synthetic_key(**{**base, "train_per_class": 0}) == k  # the whole train split: keys as before


def test_a_set_distilled_from_a_train_subset_is_not_reused_for_the_whole_split(tmp_path):
    from dpcore.synthetic.cache import entry_key

    from conftest import template_dataset

    ds = template_dataset(3, 10, (1, 8, 8))
    whole = entry_key(ds, method="dm", ipc=2, model=MODEL, seed=0)
    part = entry_key(ds.subset(5), method="dm", ipc=2, model=MODEL, seed=0)
    assert ds.subset(5).train_per_class == 5 and whole != part


def test_stopped_or_killed_distillation_is_not_cached(tmp_path, ds, monkeypatch):
    syn, cached = _cached(tmp_path, ds, should_stop=lambda: True)
    assert syn.meta["stopped"] and not cached
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    class Boom:
        name, defaults = "dm", DISTILLERS["dm"].defaults

        def distill(self, *a, **k):
            raise KeyboardInterrupt

    monkeypatch.setitem(DISTILLERS, "dm", Boom())
    with pytest.raises(KeyboardInterrupt):
        _cached(tmp_path, ds)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------------------------------- files


def _set(n_per_class=2, lr=None) -> SyntheticSet:
    g = torch.Generator().manual_seed(5)
    images = torch.randn(C * n_per_class, *SHAPE, generator=g)
    labels = torch.arange(C).repeat_interleave(n_per_class)
    return SyntheticSet(images, labels, lr, {"method": "dm", "distill_s": 1.5, "params": {"a": 1}})


def test_save_load_round_trip(tmp_path, ds):
    syn = _set(lr=0.0125)
    folder = save_synthetic(syn, tmp_path / "set")
    assert sorted(p.name for p in folder.iterdir()) == ["images_best.pt", "labels_best.pt", "lr_best.pt", "meta.json"]
    back = load_synthetic(folder, ds)
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.lr == pytest.approx(0.0125)
    assert back.meta["distill_s"] == 1.5 and back.meta["params"] == {"a": 1}

    save_synthetic(_set(), folder)  # overwrite without lr: no stale lr file
    assert load_synthetic(folder, ds).lr is None

    torch.save({"images": syn.images, "labels": syn.labels, "lr": torch.tensor(0.5)}, tmp_path / "s.pt")
    assert load_synthetic(tmp_path / "s.pt", ds).lr == 0.5
    np.savez(tmp_path / "s.npz", images=syn.images.numpy(), labels=syn.labels.numpy().astype(np.int32))
    z = load_synthetic(tmp_path / "s.npz", ds)
    assert torch.equal(z.images, syn.images) and z.labels.dtype == torch.int64


def _bad_images(kind):
    syn = _set()
    if kind == "shape":
        syn.images = torch.randn(C * 2, 1, 4, 4)
    elif kind == "nan":
        syn.images[3, 0, 1, 1] = float("nan")
    elif kind == "raw":
        syn.images = torch.randint(0, 256, syn.images.shape).float()
    elif kind == "range":
        syn.labels = syn.labels.clone()
        syn.labels[0] = C
    return syn


@pytest.mark.parametrize(
    "kind, file, text",
    [
        ("shape", "images_best.pt", "images are 1x4x4 (CxHxW) but dataset tiny is 1x8x8"),
        ("range", "labels_best.pt", "labels range 0..10 but dataset tiny has 10 classes"),
        ("nan", "images_best.pt", "1 non-finite value(s) (NaN/inf)"),
        ("raw", "images_best.pt", "images look like raw 0-255 pixels"),
        ("corrupt", "images_best.pt", "cannot load with torch.load"),
    ],
)
def test_load_errors_name_the_file(tmp_path, ds, kind, file, text):
    folder = tmp_path / kind
    if kind == "corrupt":
        save_synthetic(_set(), folder)
        (folder / "images_best.pt").write_bytes(os.urandom(256))
    else:
        save_synthetic(_bad_images(kind), folder)
    with pytest.raises(DataError) as info:
        load_synthetic(folder, ds)
    msg = str(info.value)
    assert str(folder / file) in msg and text in msg and "\n" not in msg


def test_load_errors_other_inputs(tmp_path, ds):
    cases = {
        "missing_dir": (tmp_path / "empty", "labels_best.pt"),
        "no_labels_key": (tmp_path / "d.pt", "has no 'labels' entry"),
        "not_dict": (tmp_path / "t.pt", "expected a dict with 'images' and 'labels'"),
        "uint8": (tmp_path / "u.npz", "images are uint8, not float"),
        "unit": (tmp_path / "f.npz", "images look like [0, 1] pixels"),
        "wrong_len": (tmp_path / "w.npz", "19 labels for 20 images"),
        "not_found": (tmp_path / "nope.pt", "not found"),
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "images_best.pt").write_bytes(b"")
    torch.save({"images": torch.zeros(1, *SHAPE)}, tmp_path / "d.pt")
    torch.save(torch.zeros(1, *SHAPE), tmp_path / "t.pt")
    labels = np.arange(C).repeat(2)
    np.savez(tmp_path / "u.npz", images=np.zeros((20, *SHAPE), np.uint8), labels=labels)
    np.savez(tmp_path / "f.npz", images=np.random.rand(20, *SHAPE).astype(np.float32), labels=labels)
    np.savez(tmp_path / "w.npz", images=np.random.randn(20, *SHAPE).astype(np.float32), labels=labels[:19])
    for name, (path, text) in cases.items():
        with pytest.raises(DataError) as info:
            load_synthetic(path, ds)
        msg = str(info.value)
        assert str(path) in msg and text in msg and "\n" not in msg, (name, msg)


def test_whitened_dataset_accepts_any_sign(tmp_path):
    wds = _dataset(whitened=True)
    syn = _set()
    syn.images = syn.images.abs() * 0.5  # non-negative small values are fine in ZCA space
    back = load_synthetic(save_synthetic(syn, tmp_path / "w"), wds)
    assert torch.equal(back.images, syn.images)


def test_synthetic_set_to_device():
    syn = _set(lr=0.1)
    moved = syn.to("cpu")
    assert moved.lr == 0.1 and len(moved) == 2 * C and moved.class_counts(C) == [2] * C
