"""The analyses: instability (interpolation ends, zero for identical trainings), weights, engine, report."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from conftest import TINY_PROFILE, make_npz
from dpcore.analysis.instability import Hooks, instability_analysis, interpolate, recompute_bn
from dpcore.analysis.weights import jaccard, random_jaccard, weight_histograms
from dpcore.config import Config
from dpcore.engine import Run, run_identity
from dpcore.experiment import Experiment, run_experiment
from dpcore.validate import load_data
from dpcore.errors import ConfigError
from dpcore.events import AnalysisDone, RoundStarted, StageStarted
from dpcore.masks import full_mask, magnitude_prune
from dpcore.models import build_model
from dpcore.profiles import load_profile
from dpcore.store import RunDir
from dpcore.training import Schedule, Stopped, evaluate, restore, snapshot

ANALYSIS = """
[analysis]
instability_rounds = [2]
histogram_rounds = [1, 3]
figures = true
"""


def tiny(tmp_path, *overrides, analysis=""):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PROFILE.format(npz=make_npz(tmp_path / "tiny.npz")) + analysis)
    cfg, _ = load_profile(str(path), list(overrides))
    return cfg


def setup_net(tmp_path, model="lenet-300-100", **options):
    cfg = tiny(tmp_path)
    ds = load_data(cfg, None, torch.device("cpu"))
    torch.manual_seed(0)
    net = build_model(model, num_classes=ds.num_classes, in_shape=ds.shape, **options)
    mask = magnitude_prune(net, full_mask(net), total_round=2, fraction=0.2, scope="global")  # a 36% mask
    schedule = Schedule(optimizer="sgd", lr=0.02, epochs=2, batch_size=32)
    return ds, net, mask, schedule


def test_interpolation_ends_are_the_two_trained_models(tmp_path):
    ds, net, mask, schedule = setup_net(tmp_path)
    start = snapshot(net)
    res = instability_analysis(net, start, mask, ds, schedule=schedule, seed=7, alphas=11)
    curve = res.curve
    assert len(curve.alphas) == 11 and curve.alphas[0] == 0.0 and curve.alphas[-1] == 1.0
    for end, state in ((0, res.states[0]), (-1, res.states[1])):
        restore(net, state)
        acc, loss = evaluate(net, ds.x_test, ds.y_test, prepare=ds.prepare)
        assert curve.test_acc[end] == acc and curve.test_loss[end] == loss
    assert (curve.test_acc[0], curve.test_acc[-1]) == res.end_acc
    assert (curve.test_loss[0], curve.test_loss[-1]) == res.end_loss
    # Different data orders give different weights, and masked weights stay zero along the path.
    assert any(not torch.equal(res.states[0][k], res.states[1][k]) for k in res.states[0])
    mid = interpolate(res.states[0], res.states[1], 0.5)
    assert all(int((mid[n][~m] != 0).sum()) == 0 for n, m in mask.items())
    assert res.curve.instability >= abs(res.end_acc[0] - res.end_acc[1]) / 2 - 1e-12
    assert res.curve.barrier >= 0 and res.train_s[0] > 0 and res.train_s[1] > 0


def test_identical_trainings_have_zero_instability(tmp_path):
    ds, net, mask, schedule = setup_net(tmp_path)
    start = snapshot(net)
    res = instability_analysis(net, start, mask, ds, schedule=schedule, seed=7, alphas=11, same_order=True)
    assert res.seeds[0] == res.seeds[1]
    assert all(torch.equal(res.states[0][k], res.states[1][k]) for k in res.states[0])
    assert res.curve.instability == 0.0 and res.curve.barrier == 0.0
    assert len(set(res.curve.test_acc)) == 1 and len(set(res.curve.test_loss)) == 1


def test_bn_recompute_reestimates_the_statistics(tmp_path):
    ds, net, mask, _ = setup_net(tmp_path, "convnet", width=8, depth=2, norm="batch")
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert recompute_bn(net, ds.x_train, ds.prepare, batch_size=10**6) > 0
    with torch.no_grad():
        want = conv(ds.prepare(ds.x_train)).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, want, atol=1e-5)
    assert recompute_bn(build_model("lenet-300-100", num_classes=4, in_shape=ds.shape), ds.x_train, ds.prepare, 64) == 0
    stop = Hooks(should_stop=lambda: True)
    with pytest.raises(Stopped):
        instability_analysis(net, snapshot(net), mask, ds, schedule=Schedule("sgd", 0.01, 1, 32), seed=0,
                             bn_recompute=True, hooks=stop)


def test_jaccard_of_a_mask_with_itself_and_its_complement():
    gen = torch.Generator().manual_seed(0)
    a = {"l1.weight": torch.rand(20, 30, generator=gen) > 0.5, "l2.weight": torch.rand(5, 20, generator=gen) > 0.3}
    assert jaccard(a, a) == {"l1.weight": 1.0, "l2.weight": 1.0, "all": 1.0}
    assert jaccard(a, {n: ~m for n, m in a.items()}) == {"l1.weight": 0.0, "l2.weight": 0.0, "all": 0.0}
    half = {"w": torch.tensor([True, True, False, False])}
    other = {"w": torch.tensor([True, False, True, False])}
    assert jaccard(half, other)["w"] == pytest.approx(1 / 3)
    assert random_jaccard(half, other)["w"] == pytest.approx(0.25 / 0.75)


def test_histograms_count_exactly_the_surviving_weights():
    gen = torch.Generator().manual_seed(1)
    init = {"a.weight": torch.randn(30, 40, generator=gen), "b.weight": torch.rand(10, 30, generator=gen) - 0.5}
    masks = {1: {n: torch.rand(w.shape, generator=gen) > 0.3 for n, w in init.items()},
             4: {n: w.abs() > 0.6 for n, w in init.items()}}  # round 4 keeps only |w0| > 0.6
    h = weight_histograms(init, masks, {1: 0.3, 4: 0.5}, bins=20)
    for name, w in init.items():
        assert sum(h["layers"][name]["all"]) == w.numel()
        assert len(h["layers"][name]["edges"]) == 21
    for rnd in h["rounds"]:
        for name, layer in rnd["layers"].items():
            kept = int(masks[rnd["round"]][name].sum())
            assert sum(layer["counts"]) == layer["kept"] == kept and layer["total"] == init[name].numel()
    r4 = h["rounds"][1]["layers"]["a.weight"]
    edges = h["layers"]["a.weight"]["edges"]
    inner = [c for c, lo, hi in zip(r4["counts"], edges, edges[1:]) if -0.6 < lo and hi < 0.6]
    assert inner and sum(inner) == 0  # no survivor in a bin strictly inside (-0.6, 0.6)
    assert r4["near_zero"] < h["layers"]["a.weight"]["near_zero_all"]


def test_analysis_section_is_validated_and_keeps_run_ids(tmp_path):
    cfg = Config()
    base = run_identity(cfg, "imp", 0, torch.device("cpu"))
    figs_only = replace(cfg, analysis=replace(cfg.analysis, figures=True))
    assert run_identity(figs_only, "imp", 0, torch.device("cpu")) == base
    asked = replace(cfg, analysis=replace(cfg.analysis, instability_rounds=[3]))
    assert "analysis" in run_identity(asked, "imp", 0, torch.device("cpu")) and "analysis" not in base
    with pytest.raises(ConfigError, match="'analysis.instability_rounds' has round 9"):
        tiny(tmp_path, "analysis.instability_rounds=[9]")
    with pytest.raises(ConfigError, match="'analysis.alphas' = 2 must be >= 3"):
        tiny(tmp_path, "analysis.alphas=2")


def test_extra_rewind_point_replays_the_dense_training(tmp_path):
    cfg = tiny(tmp_path, "prune.rewind=1", "prune.methods=['imp']")
    ds = load_data(cfg, None, torch.device("cpu"))
    run = Run(cfg, Experiment(cfg, tmp_path / "runs", device="cpu").plans[0], ds, tmp_path / "runs")
    run.dir.create({})
    run.results = run.new_results([])
    model, init, dense = run.start_point()
    state, _ = run.analysis_stage().capture_rewind(model, init, run.rewind_step)
    assert all(torch.equal(state[k], dense["rewind"][k]) for k in state)
    assert not all(torch.equal(state[k], init[k]) for k in state)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """imp + distilled on the tiny data with analyses; stopped once during the interpolation, then resumed."""
    tmp = tmp_path_factory.mktemp("analysed")
    cfg = tiny(tmp, "prune.methods=['imp', 'distilled']", analysis=ANALYSIS)
    stopping = {"on": True}

    def stop_at_interpolation(ev):
        if isinstance(ev, StageStarted) and ev.stage == "interpolate" and stopping["on"]:
            stopping["flag"] = True

    first = run_experiment(cfg, tmp / "runs", sink=stop_at_interpolation,
                           should_stop=lambda: stopping.get("flag", False))
    stopping.update(on=False, flag=False)
    events = []
    second = run_experiment(cfg, tmp / "runs", sink=events.append)
    return tmp / "runs", first, second, events


def test_run_with_analysis_writes_instability_histograms_and_figures(analysed):
    runs, first, second, events = analysed
    assert first[0].status == "stopped" and len(first[0].rounds) == 3 and first[0].instability is None
    resumed = [e for e in events if e.run_id == first[0].run_id]
    assert not any(isinstance(e, RoundStarted) for e in resumed)  # the resume only ran the missing analyses
    assert any(isinstance(e, AnalysisDone) and e.analysis == "instability" for e in resumed)
    for res in second:
        on_disk = json.loads((runs / res.run_id / "results.json").read_text())
        assert on_disk["status"] == "done"
        (entry,) = on_disk["instability"]
        assert entry["round"] == 2 and entry["rewind"] == {"k": 0, "unit": "epoch", "step": 0}
        assert len(entry["alphas"]) == len(entry["test_acc"]) == len(entry["test_loss"]) >= 11
        assert entry["sparsity"] == pytest.approx(0.36) and 0 <= entry["instability"] <= 1
        assert entry["test_acc"][0] == entry["end_acc"][0] and entry["test_acc"][-1] == entry["end_acc"][1]
        assert [h["round"] for h in on_disk["weight_histograms"]["rounds"]] == [1, 3]
        mask3 = RunDir(runs, res.run_id).load_mask(3)
        kept = on_disk["weight_histograms"]["rounds"][1]["layers"]
        assert {n: h["kept"] for n, h in kept.items()} == {n: int(m.sum()) for n, m in mask3.items()}
        for name in ("accuracy_vs_sparsity", "time_to_mask", "interpolation", "weight_histograms", "layer_sparsity"):
            for ext in ("png", "svg"):
                path = runs / res.run_id / "figures" / f"{name}.{ext}"
                assert path.stat().st_size > 1000, path
                assert f"figures/{name}.{ext}" in on_disk["figures"]
    again = []
    run_experiment(load_profile(str(runs.parent / "tiny.toml"), ["prune.methods=['imp', 'distilled']"])[0],
                   runs, sink=again.append)
    assert again == []  # everything done: a rerun does nothing


def dptui(*args):
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DPTUI_RUNS_DIR", None)
    return subprocess.run([sys.executable, "-m", "dptui", *args], capture_output=True, text=True, timeout=300, env=env)


def test_report_of_two_runs_has_both_methods_tables_and_figures(analysed, tmp_path):
    runs, _, second, _ = analysed
    out = tmp_path / "report"
    proc = dptui("report", *(str(runs / r.run_id) for r in second), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page):
        assert "imp" in text and "distilled" in text
        for title in ("Rounds", "Instability", "Layer sparsity", "Initial weights of survivors", "Mask overlap", "Seeds"):
            assert title in text
    imp = next(r for r in second if r.method == "imp")
    cell = f"{100 * imp.instability[0]['instability']:.2f}"
    assert "| imp | 2 | 36.00 | k=0 |" in md and cell in md.split("## Instability")[1].split("##")[0]
    for name in ("accuracy_vs_sparsity", "interpolation", "weight_histograms", "mask_overlap"):
        assert f"figures/{name}.png" in md and f"figures/{name}.svg" in page
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    bad = dptui("report", str(tmp_path / "nowhere"), "--out", str(out))
    assert bad.returncode == 2 and "no such run directory" in bad.stderr and "Traceback" not in bad.stderr


def test_analyze_command_adds_rewind_points_to_an_existing_run(analysed):
    runs, _, second, _ = analysed
    run = runs / next(r for r in second if r.method == "distilled").run_id
    proc = dptui("analyze", str(run), "--rounds", "1", "--rewinds", "0,1", "--alphas", "5", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((run / "results.json").read_text())["instability"]
    got = {(e["round"], e["rewind"]["k"], len(e["alphas"])) for e in entries}
    assert {(1, 0, 5), (1, 1, 5), (2, 0, 11)} <= got
    assert "Instability" in proc.stdout
    for args, needle in ((["--rounds", "x"], "--rounds 'x'"), (["--rounds", "9"], "round 9")):
        bad = dptui("analyze", str(run), *args)
        assert bad.returncode == 2 and needle in bad.stderr and bad.stderr.strip().count("\n") == 0
