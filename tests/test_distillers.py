"""MTT (experts + trajectory matching), gradient matching, their cache keys, and ``dptui distill``
(tiny CPU problems; the CLI tests run the real command in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dpcore.data.dataset import Dataset
from dpcore.models import build_model
from dpcore.synthetic import DISTILLERS, get_or_distill, load_synthetic, save_synthetic, synthetic_key
from dpcore.synthetic import gm, mtt
from dpcore.synthetic.trajectories import FlatParams
from conftest import template_dataset

C, PER_CLASS, SHAPE = 4, 30, (1, 8, 8)
LENET = {"name": "lenet-300-100", "options": {}}
# Tiny MTT: 2 experts x 3 epochs, 5 unrolled steps.
MTT_TINY = {"iterations": 40, "syn_steps": 5, "expert_epochs": 1, "max_start_epoch": 2, "num_experts": 2,
            "expert_train_epochs": 3, "expert_batch": 32, "lr_img": 100.0, "lr_teacher": 0.05, "dsa": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return template_dataset(C, PER_CLASS, SHAPE)


def lenet():
    return build_model("lenet-300-100", num_classes=C, in_shape=SHAPE)


def small_convnet():
    return build_model("convnet", num_classes=C, in_shape=SHAPE, width=8, depth=2)


# -------------------------------------------------------------------------------------------- MTT


def test_mtt_unroll_is_differentiable_in_images_and_lr():
    torch.manual_seed(0)
    net = small_convnet().double()
    flat = FlatParams(net)
    theta0 = flat.flatten(net)
    target = theta0 + 0.01 * torch.randn_like(theta0)
    images = torch.randn(2 * C, *SHAPE, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(C).repeat_interleave(2)
    batches = [(torch.randperm(2 * C, generator=torch.Generator().manual_seed(s))[:6], s) for s in range(4)]

    def loss_at(lr_value: float, imgs: torch.Tensor) -> torch.Tensor:
        lr = torch.tensor(lr_value, dtype=torch.float64, requires_grad=True)
        end = mtt.unroll(net, flat, {}, theta0, imgs, labels, lr, batches)
        return mtt.matching_loss(end, theta0, target), lr

    loss, lr = loss_at(0.05, images)
    loss.backward()
    assert images.grad is not None and lr.grad is not None
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0 and lr.grad.abs() > 0
    # The gradient through the 4 unrolled steps is the true derivative (central differences, float64).
    h = 1e-5
    numeric_lr = (loss_at(0.05 + h, images)[0] - loss_at(0.05 - h, images)[0]) / (2 * h)
    assert float(lr.grad) == pytest.approx(float(numeric_lr.detach()), rel=1e-4)
    direction = torch.randn_like(images)
    numeric_img = (loss_at(0.05, images + h * direction)[0] - loss_at(0.05, images - h * direction)[0]) / (2 * h)
    assert float((images.grad * direction).sum()) == pytest.approx(float(numeric_img.detach()), rel=1e-4)
    # With no steps the student stays at the start: the normalised loss is exactly 1.
    end = mtt.unroll(net, flat, {}, theta0, images, labels, lr, [])
    assert float(mtt.matching_loss(end, theta0, target).detach()) == pytest.approx(1.0)


def test_mtt_loss_falls_and_lr_is_learned(ds, tmp_path):
    seen: list = []
    syn = DISTILLERS["mtt"].distill(ds, ipc=2, model_factory=lenet, seed=0, device="cpu", params=MTT_TINY,
                                    progress=lambda done, total, loss: seen.append((done, total, loss)),
                                    workdir=tmp_path)
    curve = [loss for _, loss in syn.meta["loss_curve"]]
    assert len(curve) == 40 and syn.meta["iterations_done"] == 40
    assert np.mean(curve[-8:]) < 0.7 * np.mean(curve[:8]), curve
    assert seen[-1] == (40, 40, pytest.approx(curve[-1]))
    assert syn.lr is not None and syn.lr > 0 and syn.lr != pytest.approx(MTT_TINY["lr_teacher"])
    assert syn.images.shape == (2 * C, *SHAPE) and torch.bincount(syn.labels).tolist() == [2] * C
    init = ds.prepare(ds.x_train[torch.tensor(syn.meta["init_indices"])])
    assert torch.equal(ds.y_train[torch.tensor(syn.meta["init_indices"])], syn.labels)
    assert not torch.allclose(init, syn.images)
    m = syn.meta
    assert m["params"]["syn_steps"] == 5 and m["params"]["lr_lr"] == 1e-5  # table value kept
    assert m["experts"]["count"] == 2 and m["experts"]["trained_now"] == 2
    assert m["distill_s"] >= m["matching_s"] > 0 and m["whitened"] is False
    experts = sorted(p.name for p in (tmp_path / "experts" / m["experts"]["key"]).iterdir())
    assert experts == ["expert_000.pt", "expert_001.pt", "spec.json"]

    folder = save_synthetic(syn, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["images_best.pt", "labels_best.pt", "lr_best.pt", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["method"] == "mtt" and meta["ipc"] == 2 and meta["params"]["iterations"] == 40
    back = load_synthetic(folder, ds)
    assert back.lr == pytest.approx(syn.lr) and torch.equal(back.images, syn.images)


def test_mtt_reads_each_expert_once_and_keeps_only_the_usable_epochs(ds, tmp_path, monkeypatch):
    from dpcore.synthetic import trajectories

    params = {**MTT_TINY, "num_experts": 2, "expert_train_epochs": 3, "max_start_epoch": 2, "expert_epochs": 1}
    DISTILLERS["mtt"].distill(ds, ipc=1, model_factory=lenet, seed=0, device="cpu", workdir=tmp_path,
                              params={**params, "iterations": 1})  # trains and saves the experts
    reads, banks = [], []
    real_read, real_on = trajectories._read_expert, trajectories.ExpertBuffer.on
    monkeypatch.setattr(trajectories, "_read_expert", lambda *a: reads.append(a[0]) or real_read(*a))
    monkeypatch.setattr(trajectories.ExpertBuffer, "on", lambda self, device: banks.append(self.bank.shape)
                        or real_on(self, device))
    syn = DISTILLERS["mtt"].distill(ds, ipc=1, model_factory=lenet, seed=0, device="cpu", workdir=tmp_path,
                                    params={**params, "iterations": 30})
    assert syn.meta["iterations_done"] == 30 and syn.meta["experts"]["trained_now"] == 0
    assert sorted(p.name for p in reads) == ["expert_000.pt", "expert_001.pt"]  # once each, not per iteration
    assert banks == [(2, 3, FlatParams(lenet()).numel)]  # epochs 0 .. max_start_epoch - 1 + expert_epochs


def test_mtt_defaults_follow_the_table():
    r = DISTILLERS["mtt"].resolve
    c10 = r("cifar10", 10, {})
    assert (c10["syn_steps"], c10["expert_epochs"], c10["max_start_epoch"], c10["lr_img"], c10["lr_lr"],
            c10["lr_teacher"]) == (30, 2, 20, 100.0, 1e-5, 0.01)
    assert (c10["num_experts"], c10["expert_train_epochs"], c10["iterations"]) == (100, 50, 5000)
    assert [r("cifar10", 50, {})[k] for k in ("max_start_epoch", "lr_img")] == [40, 1000.0]
    assert [r("cifar100", 10, {})[k] for k in ("syn_steps", "max_start_epoch", "lr_img")] == [20, 20, 1000.0]
    assert [r("cifar100", 50, {})[k] for k in ("syn_steps", "max_start_epoch")] == [80, 40]
    assert r("cifar10", 1, {}) == c10 and r("cifar10", 40, {}) == r("cifar10", 50, {})  # nearest ipc
    assert r("mnist-embedded", 10, {}) == r("mnist", 10, {}) != c10
    assert mtt.table_row("cifar10", 10)[3] is True and mtt.table_row("cifar10", 50)[3] is False
    assert r("cifar10", 10, {"lr_img": 1000})["lr_img"] == 1000.0
    with pytest.raises(Exception, match="unknown parameter"):
        r("cifar10", 10, {"lr_image": 1.0})


def test_mtt_rejects_starts_beyond_the_experts(ds, tmp_path):
    with pytest.raises(Exception, match="exceeds expert_train_epochs"):
        DISTILLERS["mtt"].distill(ds, ipc=2, model_factory=lenet, seed=0, device="cpu", workdir=tmp_path,
                                  params={**MTT_TINY, "max_start_epoch": 4})


# --------------------------------------------------------------------------------------------- GM


def test_gm_matching_loss_falls(ds):
    seen: list = []
    syn = DISTILLERS["gm"].distill(ds, ipc=2, model_factory=small_convnet, seed=0, device="cpu",
                                   params={"iterations": 40, "batch_real": 16, "dsa": False, "outer_loop": 2,
                                           "inner_loop": 1},
                                   progress=lambda done, total, loss: seen.append(loss))
    losses = seen[1:]
    assert len(losses) == 40 and seen[0] is None
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    assert syn.images.shape == (2 * C, *SHAPE) and syn.lr is None
    init = ds.prepare(ds.x_train[torch.tensor(syn.meta["init_indices"])])
    assert not torch.allclose(init, syn.images)


def test_gm_distance_and_loops():
    g = {"w": torch.randn(2, 3, 5), "b": torch.randn(2, 3)}
    assert float(gm.match_distance(g, g)) == pytest.approx(0.0, abs=1e-5)  # identical gradients
    assert float(gm.match_distance(g, {"w": -g["w"], "b": g["b"]})) == pytest.approx(2 * 2 * 3, abs=1e-4)
    r = DISTILLERS["gm"].resolve
    assert [(r("x", i, {})["outer_loop"], r("x", i, {})["inner_loop"]) for i in (1, 10, 50)] == [(1, 1), (10, 50), (50, 10)]
    assert r("x", 10, {"outer_loop": 3})["outer_loop"] == 3


def test_dm_embedder_spec(ds):
    syn = DISTILLERS["dm"].distill(ds, ipc=1, model_factory=lenet, seed=0, device="cpu",
                                   params={"iterations": 2, "batch_real": 8, "embedder": "convnet:width=4,depth=1"})
    assert syn.meta["params"]["embedder"] == "convnet:width=4,depth=1" and syn.images.shape == (C, *SHAPE)
    for bad, text in (("convnet:width", "bad model spec"), ("convnet:colour=3", "has no option 'colour'"),
                      ("mlp", "unknown model 'mlp'")):
        with pytest.raises(Exception, match=text):
            DISTILLERS["dm"].distill(ds, ipc=1, model_factory=lenet, seed=0, device="cpu",
                                     params={"iterations": 1, "embedder": bad})


def test_a_diverging_distillation_is_one_clear_error_and_nothing_is_cached(tmp_path, ds):
    from dpcore.errors import DataError

    with pytest.raises(DataError) as err:
        get_or_distill(tmp_path / "cache", ds, method="dm", ipc=1, model=LENET, model_factory=lenet, seed=0,
                       device="cpu", params={"iterations": 20, "batch_real": 8, "lr_img": 1e38})
    assert "lower lr_img (now 1e+38)" in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "cache").glob("*/images_best.pt"))


# ------------------------------------------------------------------------------------------ cache


@pytest.mark.parametrize("method", ["mtt", "gm"])
def test_cache_key_changes_with_every_hyperparameter(method):
    d = DISTILLERS[method]
    base = dict(dataset_name="cifar10", method=method, ipc=10, model=LENET, seed=0, whitened=True)
    key = synthetic_key(**base, params={})
    assert synthetic_key(**base, params=d.resolve("cifar10", 10, {})) == key  # explicit defaults: same key
    keys = set()
    for name, value in d.resolve("cifar10", 10, {}).items():
        changed = (not value) if isinstance(value, bool) else (value + "_x" if isinstance(value, str) else value * 2 + 1)
        keys.add(synthetic_key(**base, params={name: changed}))
    assert len(keys) == len(d.resolve("cifar10", 10, {})) and key not in keys
    assert synthetic_key(**{**base, "ipc": 50}, params={}) != key


class _Counting:
    def __init__(self, inner):
        self.inner, self.name, self.defaults, self.resolve, self.calls = inner, inner.name, inner.defaults, inner.resolve, 0

    def distill(self, *args, workdir=None, **kwargs):
        self.calls += 1
        return self.inner.distill(*args, workdir=workdir, **kwargs)


def test_mtt_cache_reuses_sets_and_experts(tmp_path, ds, monkeypatch):
    counting = _Counting(DISTILLERS["mtt"])
    monkeypatch.setitem(DISTILLERS, "mtt", counting)
    cache = tmp_path / "cache"

    def get(**params):
        return get_or_distill(cache, ds, method="mtt", ipc=1, model=LENET, model_factory=lenet, seed=0,
                              device="cpu", params={**MTT_TINY, "iterations": 3, **params})

    a, hit_a = get()
    b, hit_b = get(lr_lr=1e-5)  # the table's value stated explicitly: same key
    assert (hit_a, hit_b, counting.calls) == (False, True, 1)
    assert torch.equal(a.images, b.images) and b.lr == pytest.approx(a.lr) and b.meta["key"] == a.meta["key"]
    assert a.meta["experts"]["trained_now"] == 2

    c, hit_c = get(syn_steps=4)  # a matching setting: new set, same experts
    assert not hit_c and counting.calls == 2 and c.meta["key"] != a.meta["key"]
    assert c.meta["experts"]["key"] == a.meta["experts"]["key"] and c.meta["experts"]["trained_now"] == 0
    assert not torch.equal(a.images, c.images)

    d, hit_d = get(lr_teacher=0.02)  # an expert setting: new set and new experts
    assert not hit_d and d.meta["experts"]["key"] != a.meta["experts"]["key"] and d.meta["experts"]["trained_now"] == 2
    e, _ = get(num_experts=3)  # one more expert: only it is trained
    assert e.meta["experts"]["key"] == a.meta["experts"]["key"] and e.meta["experts"]["trained_now"] == 1
    assert sorted(p.name for p in (cache / "experts").iterdir()) == sorted(
        {a.meta["experts"]["key"], d.meta["experts"]["key"]})


def test_gm_cache_hit_and_miss(tmp_path, ds):
    def get(**params):
        return get_or_distill(tmp_path / "cache", ds, method="gm", ipc=1, model=LENET, model_factory=lenet,
                              seed=0, device="cpu", params={"iterations": 2, "batch_real": 8, **params})

    a, hit_a = get()
    b, hit_b = get(outer_loop=1)  # DC's value for ipc 1, explicit
    c, hit_c = get(lr_img=0.2)
    assert (hit_a, hit_b, hit_c) == (False, True, False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


# -------------------------------------------------------------------------------------------- CLI


def dptui(*args, cwd=None, timeout=300):
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("DPTUI_RUNS_DIR", None)
    return subprocess.run([sys.executable, "-m", "dptui", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def test_distill_evaluate_json(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--evaluate", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key in ("test_acc", "train_s", "source", "ipc", "model", "dataset", "epochs", "device"):
        assert key in out, key
    assert 0.0 <= out["test_acc"] <= 1.0 and out["train_s"] > 0 and out["ipc"] == 2
    assert out["source"] == "dm ipc2" and out["epochs"] == 4 and out["model"] == "lenet-300-100"
    assert out["cached"] is False and out["distill_s"] > 0

    # Same profile, set written out: now served from the cache; then evaluated from the written folder.
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--out", str(tmp_path / "set"))
    assert proc.returncode == 0, proc.stderr
    assert "time-to-distill" in proc.stdout and "reused from the cache" in proc.stdout
    assert (tmp_path / "set" / "images_best.pt").is_file() and (tmp_path / "set" / "meta.json").is_file()
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--evaluate", "--json",
                 "--set", "synthetic.path=set", "--data-root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["source"] == str(tmp_path / "set") and again["ipc"] == 2 and again["test_acc"] == out["test_acc"]


def test_distill_method_mtt_with_progress_and_out(tmp_path, tiny_profile):
    sets = [f"--set=synthetic.params.{k}={json.dumps(v)}" for k, v in {**MTT_TINY, "iterations": 3}.items()]
    proc = dptui("distill", "--profile", str(tiny_profile), "--method", "mtt", "--ipc", "1", *sets,
                 "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "mtt"))
    assert proc.returncode == 0, proc.stderr
    assert "mtt ipc1" in proc.stdout and "learned lr" in proc.stdout and "time-to-distill" in proc.stdout
    meta = json.loads((tmp_path / "mtt" / "meta.json").read_text())
    assert meta["method"] == "mtt" and meta["ipc"] == 1 and meta["params"]["syn_steps"] == 5
    assert meta["distill_s"] > 0 and meta["model"]["name"] == "lenet-300-100"
    assert (tmp_path / "mtt" / "lr_best.pt").is_file()
    assert any((tmp_path / "runs" / "cache" / "synthetic" / "experts").iterdir())


@pytest.mark.parametrize("kind", ["mismatched", "corrupt", "missing"])
def test_distill_bad_synthetic_file_is_one_line_exit_2(tmp_path, tiny_profile, kind):
    folder = tmp_path / "bad"
    if kind == "mismatched":  # a CIFAR-shaped set for the 8x8 grey tiny dataset
        torch.save(torch.randn(20, 3, 32, 32), tmp_path / "x.pt")
        folder.mkdir()
        torch.save(torch.randn(8, 3, 32, 32), folder / "images_best.pt")
        torch.save(torch.arange(4).repeat_interleave(2), folder / "labels_best.pt")
        want = "images are 3x32x32 (CxHxW) but dataset npz is 1x8x8"
    elif kind == "corrupt":
        folder.mkdir()
        (folder / "images_best.pt").write_bytes(os.urandom(300))
        torch.save(torch.arange(4).repeat_interleave(2), folder / "labels_best.pt")
        want = "cannot load with torch.load"
    else:
        want = "not found"
    proc = dptui("distill", "--profile", str(tiny_profile), "--evaluate", "--json", "--set",
                 f"synthetic.path={json.dumps(str(folder))}", "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("error: ")
    assert want in err and str(folder) in err
    assert proc.stdout == ""


# ------------------------------------------------------------------------------- evaluate.py


def test_train_on_synthetic_matches_the_engine_recipe(tmp_path, tiny_profile):
    """The shared function trains exactly as ``Run.train_synthetic`` does (so the engine can call it)."""
    from dpcore.config import to_dict
    from dpcore.engine import Run
    from dpcore.experiment import Experiment
    from dpcore.validate import load_data
    from dpcore.masks import full_mask
    from dpcore.profiles import load_profile
    from dpcore.synthetic.evaluate import train_on_synthetic
    from dpcore.training import derive_seed, snapshot

    cfg, _ = load_profile(str(tiny_profile), ["synthetic.epochs=3"])
    plan = next(p for p in Experiment(cfg, tmp_path / "runs", device="cpu").plans if p.method == "distilled")
    data = load_data(cfg, None, torch.device("cpu"))
    run = Run(cfg, plan, data, tmp_path / "runs")
    syn = DISTILLERS["random-subset"].distill(data, ipc=2, seed=0, params={})
    syn.lr = 0.02  # a learned lr is used (use_learned_lr defaults to true)
    model = run.new_model()
    start = snapshot(model)
    mask = full_mask(model)
    mask[next(iter(mask))][0] = False
    run.dir.create(to_dict(cfg))
    run.start_stage("inner")
    run.train_synthetic(model, start, mask, syn, 1)
    ours = run.new_model()
    out = train_on_synthetic(ours, syn, cfg.synthetic, seed=derive_seed(plan.seed, "synthetic", 1), mask=mask)
    assert out.steps == 3
    for (name, a), b in zip(model.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.state_dict()[next(iter(mask))], start[next(iter(mask))])


def test_experts_trained_several_at_once_equal_those_trained_one_at_a_time(ds, tmp_path):
    """The GPU's way (experts in threads at once) on the CPU: same trajectories, every epoch reported once."""
    from dpcore.synthetic.trajectories import ExpertSpec, ensure_experts

    spec = ExpertSpec(lr=0.05, epochs=3, batch_size=32, dsa=True)
    seen = []
    one = ensure_experts(tmp_path / "one", ds, lenet, spec, 3, "cpu", at_once=1)
    three = ensure_experts(tmp_path / "three", ds, lenet, spec, 3, "cpu", at_once=3,
                           progress=lambda done, total, loss: seen.append((done, total)))
    assert torch.equal(one.bank, three.bank) and three.info["trained_now"] == 3
    assert seen[0] == (0, 9) and seen[-1] == (9, 9) and sorted(d for d, _ in seen) == [d for d, _ in seen]
