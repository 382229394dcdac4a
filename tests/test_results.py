"""Typed results: results.json as the engine writes it reads into RunResults and writes back unchanged,
keys of other versions are kept, and older files that lack optional keys still load."""

import json

import pytest

from app_fixtures import IMP0, SYNTHETIC, write_run
from dpcore.errors import DPError
from dpcore.profiles import load_profile
from dpcore.results import (DenseResult, ResultsError, RewindInfo, RoundRow, RunResults, SyntheticInfo, as_results,
                            load_results)
from dpcore.summary import experiment_tables

ROW = {"round": 1, "sparsity": 0.2, "remaining": 212960, "inner_train_s": 1.25, "inner_test_acc": 0.9, "prune_s": 0.01,
       "val_acc": None, "val_train_s": None, "compile_s": 0.0, "time_to_mask_s": 1.26, "time_to_mask_validated_s": None,
       "layer_sparsity": {"fc1.weight": 0.2, "fc2.weight": 0.2}}


def layout(**over) -> dict:
    """A results.json as ``Run.new_results`` + the rounds and analyses write it (key order included)."""
    res = {"schema": 1, "run_id": "0123456789abcdef", "experiment": "tiny", "method": "distilled", "variant": "dm ipc2",
           "seed": 0, "dataset": "npz", "model": "lenet-300-100", "device": "cpu", "node": "10.0.0.2", "threads": 2,
           "status": "done", "error": None, "rounds_planned": 1, "fraction": 0.2,
           "rewind": {"k": 0, "unit": "epoch", "step": 0, "rewind_s": 0.0},
           "dense": {"test_acc": 0.95, "train_s": 3.5},
           "synthetic": {"source": "dm", "images": 8, "ipc": 2, "distill_s": 1.5, "cached": False, "lr": None},
           "rounds": [dict(ROW)], "started_at": 1.7e9, "updated_at": 1.7e9 + 10, "prunable_weights": 266200,
           "instability": [{"round": 1, "sparsity": 0.2, "rewind": {"k": 0, "unit": "epoch", "step": 0},
                            "alphas": [0.0, 0.5, 1.0], "test_acc": [0.9, 0.8, 0.9], "instability": 0.1, "barrier": 0.1,
                            "end_acc": [0.9, 0.9], "bn_recompute": False}],
           "weight_histograms": {"near_zero": 0.1, "layers": {}, "rounds": []}, "figures": ["figures/a.png"]}
    res.update(over)
    return res


def test_the_engines_layout_round_trips_exactly():
    d = layout()
    res = RunResults.from_json(d)
    assert isinstance(res.rounds[0], RoundRow) and isinstance(res.dense, DenseResult)
    assert isinstance(res.synthetic, SyntheticInfo) and isinstance(res.rewind, RewindInfo)
    assert res.label == "distilled dm ipc2" and res.rows[0].val_acc is None and res.distill_s == 1.5
    assert res.instability == d["instability"] and res.figures == ["figures/a.png"] and res.extra == {}
    out = res.to_json()
    assert out == d and list(out) == list(d)  # same keys, values, nesting and order
    assert json.dumps(out) == json.dumps(d)
    assert list(out["rounds"][0]) == list(ROW)


def test_keys_written_only_when_set_stay_absent_and_nulls_stay_null():
    d = layout(status="running", synthetic=None, dense=None, rounds=[])
    for key in ("variant", "node", "prunable_weights", "instability", "weight_histograms", "figures"):
        del d[key]
    del d["rewind"]["rewind_s"]
    res = RunResults.from_json(d)
    assert res.variant == "" and res.node == "" and res.label == "distilled"
    assert res.to_json() == d and "variant" not in res.to_json() and res.to_json()["dense"] is None
    failed = layout(status="failed", error="RuntimeError: boom", traceback="Traceback ...")
    assert RunResults.from_json(failed).to_json() == failed


def test_unknown_keys_are_kept_at_every_level():
    d = layout(future={"x": [1, 2]}, rounds=[{**ROW, "energy_j": 12.5}])
    d["dense"]["flops"] = 7
    d["synthetic"]["made_on"] = "gpu"
    d["rewind"]["note"] = "k"
    res = RunResults.from_json(d)
    assert res.extra == {"future": {"x": [1, 2]}} and res.rounds[0].extra == {"energy_j": 12.5}
    assert res.dense.extra == {"flops": 7} and res.synthetic.extra == {"made_on": "gpu"}
    assert res.to_json() == d


def test_old_and_partial_files_load_with_defaults(tmp_path):
    # the dashboard fixtures' layout: no threads, rewind, traceback, prunable weights, compile_s
    write_run(tmp_path, IMP0, method="imp", rounds=2)
    raw = json.loads((tmp_path / IMP0 / "results.json").read_text())
    res = load_results(tmp_path / IMP0)
    assert res.threads is None and res.rewind is None and res.rewind_text == "k=0" and res.train_images is None
    assert [r.compile_s for r in res.rounds] == [None, None] and res.rounds[1].compiled is None
    assert res.dense == DenseResult(test_acc=0.962, train_s=10.8) and res.synthetic is None
    assert res.to_json() == raw  # nothing added, nothing lost
    dist = RunResults.from_json({**raw, "method": "distilled", "synthetic": dict(SYNTHETIC)})
    assert dist.synthetic.source == "dm ipc10" and dist.synthetic.lr is None
    # what the Ray driver writes for a run that never ran: no device, dense, rewind, started_at
    ray = {"schema": 1, "run_id": "r", "experiment": "e", "method": "imp", "seed": 1, "rounds": [], "dataset": "d",
           "model": "m", "rounds_planned": 3, "status": "failed", "error": "lost its node", "updated_at": 5.0}
    res = RunResults.from_json(ray)
    assert res.device == "" and res.dense is None and res.started_at is None and res.last is None
    assert {k: v for k, v in res.to_json().items() if k in ray} == ray
    # a row of the first engine: no compile_s
    old_row = {k: v for k, v in ROW.items() if k != "compile_s"}
    assert RoundRow.from_json(old_row).to_json() == old_row
    assert load_results(tmp_path / "nothing-here") is None


def test_compiled_is_written_only_when_known():
    row = RoundRow.from_json(ROW)
    assert row.compiled is None and "compiled" not in row.to_json()
    on = RoundRow(**{**ROW, "compiled": True})
    assert on.to_json() == {**ROW, "compiled": True} and RoundRow.from_json(on.to_json()) == on


def test_malformed_results_say_what_is_wrong(tmp_path):
    with pytest.raises(ResultsError, match="rounds"):
        RunResults.from_json(layout(rounds={"round": 1}))
    with pytest.raises(ResultsError, match="round row"):
        RunResults.from_json(layout(rounds=[{"val_acc": 0.5}]))
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    with pytest.raises(DPError, match="not a dptui results file"):
        load_results(path)


def test_a_real_engine_run_round_trips_and_tables_take_dicts_or_results(tmp_path, tiny_profile):
    from dpcore.experiment import run_experiment

    cfg, _ = load_profile(str(tiny_profile), ["prune.rounds=2", "prune.validate='final'",
                                              "analysis.instability_rounds=[1]", "analysis.alphas=3",
                                              "analysis.histogram_rounds=[2]"])
    returned = run_experiment(cfg, tmp_path / "runs")
    loaded = []
    for run in returned:
        assert isinstance(run, RunResults) and as_results(run) is run  # the front door returns typed results
        run_dir = tmp_path / "runs" / run.run_id
        on_disk = json.loads((run_dir / "results.json").read_text())
        res = RunResults.from_json(on_disk)
        assert res.to_json() == on_disk and json.dumps(res.to_json(), sort_keys=True) == json.dumps(on_disk, sort_keys=True)
        assert res.status == "done" and [r.round for r in res.rounds] == [1, 2] and res.rounds[0].val_acc is None
        assert res.instability and res.weight_histograms and res.rewind.step == 0 and res.threads >= 1
        for r in res.rounds:  # the round files hold the same rows
            assert RoundRow.from_json(json.loads((run_dir / f"round_{r.round:03d}.json").read_text())) == r
        loaded.append(res)
    assert [r.label for r in loaded] == ["imp", "distilled", "random"]
    as_dicts = [r.to_json() for r in loaded]
    for a, b in zip(experiment_tables(loaded), experiment_tables(as_dicts)):  # the transition's entry point
        assert (a.title, a.rows, a.notes) == (b.title, b.rows, b.notes)
