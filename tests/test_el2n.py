"""EL2N / GraNd data-diet selection: it finds planted hard images, keeps ipc per class, and caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_npz
from dpcore.data import load_dataset
from dpcore.errors import ConfigError
from dpcore.models import build_model
from dpcore.synthetic.el2n import DISTILLER, score_batch, select

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"seeds": 2, "epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 0.001}
LENET = {"name": "lenet-300-100"}


@pytest.fixture
def planted(tmp_path: Path):
    """The tiny dataset with two images of every class relabelled as the next class: their labels
    contradict their class template, so trained networks get them wrong (large error norms)."""
    arrays = dict(np.load(make_npz(tmp_path / "base.npz")))
    y = arrays["y_train"]
    idx = np.concatenate([np.nonzero(y == c)[0][:2] for c in range(4)])
    y = y.copy()
    y[idx] = (y[idx] + 1) % 4
    arrays["y_train"] = y
    np.savez(tmp_path / "planted.npz", **arrays)
    ds = load_dataset("npz", path=tmp_path / "planted.npz")
    return ds, sorted(idx.tolist())


def factory(ds):
    return lambda: build_model("lenet-300-100", num_classes=ds.num_classes, in_shape=ds.shape)


def test_hardest_keeps_the_planted_contradicting_images(planted):
    ds, bad = planted
    syn = DISTILLER.distill(ds, ipc=2, model_factory=factory(ds), seed=0, device="cpu", params=FAST)
    assert sorted(syn.meta["indices"]) == bad
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # class-major, ipc per class
    idx = torch.tensor(syn.meta["indices"])
    assert torch.equal(syn.labels, ds.y_train[idx])
    assert torch.equal(syn.images, ds.prepare(ds.x_train[idx]))  # real images, prepared as model input
    assert syn.images.dtype == torch.float32 and syn.images.device.type == "cpu"
    meta = syn.meta
    assert meta["method"] == "el2n" and meta["distill_s"] > 0 and meta["iterations_done"] == 2
    assert meta["scores"]["score"] == "el2n" and meta["scores"]["keep"] == "hardest"
    assert meta["scores"]["selected"]["min"] > meta["scores"]["all"]["mean"]
    assert len(meta["scores"]["selected_values"]) == 8


def test_easiest_keeps_the_lowest_scores_of_every_class(planted):
    ds, bad = planted
    scores, info = DISTILLER.scores(ds, model_factory=factory(ds), seed=0, device="cpu", params=FAST)
    assert info["seeds_done"] == 2 and not info["stopped"]
    assert scores.shape == (ds.y_train.shape[0],) and (scores >= 0).all()
    syn = DISTILLER.distill(ds, ipc=3, model_factory=factory(ds), seed=0, device="cpu",
                            params={**FAST, "keep": "easiest"})
    chosen = syn.meta["indices"]
    assert not set(chosen) & set(bad)
    y = ds.y_train
    for c in range(4):
        mine = [i for i in chosen if int(y[i]) == c]
        assert len(mine) == 3
        others = torch.nonzero(y == c).flatten().tolist()
        assert max(float(scores[i]) for i in mine) <= min(float(scores[i]) for i in others if i not in mine)


def test_el2n_scores_are_the_error_norms_of_the_network(planted):
    ds, _ = planted
    torch.manual_seed(0)
    model = factory(ds)()
    x, y = ds.prepare(ds.x_train[:10]), ds.y_train[:10]
    el2n, ce = score_batch(model, x, y, "el2n")
    p = torch.softmax(model(x), 1).detach()
    onehot = torch.nn.functional.one_hot(y, 4).float()
    torch.testing.assert_close(el2n, (p - onehot).norm(dim=1))
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach())
    # GraNd: the per-sample gradient norm w.r.t. the output layer's weight and bias, by autograd
    grand, _ = score_batch(model, x, y, "grand")
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i: i + 1]), y[i: i + 1]).backward()
        g = torch.cat([model.classifier.weight.grad.flatten(), model.classifier.bias.grad])
        torch.testing.assert_close(grand[i], g.norm(), rtol=1e-5, atol=1e-6)


def test_grand_after_training_also_finds_the_planted_images(planted):
    ds, bad = planted
    syn = DISTILLER.distill(ds, ipc=2, model_factory=factory(ds), seed=0, device="cpu",
                            params={**FAST, "score": "grand"})
    assert sorted(syn.meta["indices"]) == bad
    assert syn.meta["scores"]["score"] == "grand"


def test_select_is_class_major_per_class_top_with_stable_ties():
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.7, 0.3])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert select(scores, labels, 2, 2, "hardest").tolist() == [1, 2, 4, 5]
    assert select(scores, labels, 2, 1, "easiest").tolist() == [0, 3]


def test_cached_by_key_and_progress(planted, tmp_path):
    from dpcore.synthetic import get_or_distill, synthetic_key

    ds, _ = planted
    calls = []
    first, cached = get_or_distill(tmp_path / "cache", ds, method="el2n", ipc=2, model=LENET,
                                   model_factory=factory(ds), seed=0, device="cpu", params=FAST,
                                   progress=lambda d, t, lo: calls.append((d, t, lo)))
    assert not cached
    assert calls[0] == (0, 8, None) and calls[-1][:2] == (8, 8)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    second, cached = get_or_distill(tmp_path / "cache", ds, method="el2n", ipc=2, model=LENET,
                                    model_factory=factory(ds), seed=0, device="cpu", params=FAST)
    assert cached
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.meta["indices"] == first.meta["indices"]
    key = synthetic_key(ds.name, "el2n", 2, LENET, 0, FAST, ds.whitened)
    assert second.meta["key"] == key and (tmp_path / "cache" / key).is_dir()
    # stating a default explicitly is the same entry
    _, cached = get_or_distill(tmp_path / "cache", ds, method="el2n", ipc=2, model=LENET, model_factory=factory(ds),
                               seed=0, device="cpu", params={**FAST, "keep": "hardest", "score": "el2n"})
    assert cached


def test_a_stop_gives_a_partial_set_that_is_not_cached(planted, tmp_path):
    from dpcore.synthetic import get_or_distill

    ds, _ = planted
    syn, cached = get_or_distill(tmp_path / "cache", ds, method="el2n", ipc=2, model=LENET,
                                 model_factory=factory(ds), seed=0, device="cpu", params=FAST,
                                 should_stop=lambda: True)
    assert not cached and syn.meta.get("stopped") is True
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert syn.meta["scores"]["seeds_done"] == 1
    assert not (tmp_path / "cache" / syn.meta["key"]).exists()


@pytest.mark.parametrize("bad", [{"score": "loss"}, {"keep": "middle"}, {"seeds": 0}, {"epochs": -1},
                                 {"optimizer": "lbfgs"}, {"nope": 1}, {"seeds": "four"}])
def test_bad_params_are_one_line_config_errors(planted, bad):
    ds, _ = planted
    with pytest.raises(ConfigError) as err:
        DISTILLER.distill(ds, ipc=1, model_factory=factory(ds), seed=0, device="cpu", params={**FAST, **bad})
    assert "el2n" in str(err.value) and "\n" not in str(err.value)
