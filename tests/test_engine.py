"""The engine end to end on a tiny dataset: results, reproducibility, resume, IMP's reuse, events."""

import json
import threading
from dataclasses import replace

import pytest
import torch

from dpcore.config import Config
from dpcore.engine import run_identity
from dpcore.experiment import Experiment, run_experiment
from dpcore.events import RoundDone, event_from_dict
from dpcore.profiles import load_profile
from dpcore.store import RunDir, config_hash

ROUND_KEYS = {"round", "sparsity", "inner_train_s", "inner_test_acc", "val_acc", "time_to_mask_s",
              "time_to_mask_validated_s"}


def masks_of(runs_dir, results):
    return {(r.method, r.seed): [RunDir(runs_dir, r.run_id).load_mask(i + 1) for i in range(len(r.rounds))]
            for r in results}


def same_masks(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for ma, mb in zip(a[key], b[key]):
            assert all(torch.equal(ma[n], mb[n]) for n in ma), key


def test_results_json_for_every_run(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile))
    results = run_experiment(cfg, tmp_path / "runs")
    assert [r.method for r in results] == ["imp", "distilled", "random"]
    for res in results:
        on_disk = json.loads((tmp_path / "runs" / res.run_id / "results.json").read_text())
        assert on_disk["status"] == "done"
        for key in ("method", "seed", "dataset", "model", "device", "status", "dense", "rounds"):
            assert key in on_disk
        assert 0 <= on_disk["dense"]["test_acc"] <= 1 and on_disk["dense"]["train_s"] > 0
        assert [r["round"] for r in on_disk["rounds"]] == [1, 2, 3]
        for row in on_disk["rounds"]:
            assert ROUND_KEYS <= set(row)
            assert 0 <= row["val_acc"] <= 1
            assert row["time_to_mask_validated_s"] >= row["time_to_mask_s"]
        sparsities = [row["sparsity"] for row in on_disk["rounds"]]
        assert sparsities == pytest.approx([0.2, 0.36, 0.488], abs=1e-3)
        assert (tmp_path / "runs" / res.run_id / "config.toml").exists()
    distilled = results[1]
    assert distilled.synthetic.images == 8 and distilled.synthetic.distill_s > 0
    assert results[2].rounds[0].inner_train_s == 0  # random pruning needs no training


def test_imp_validation_is_reused_as_next_inner_training(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), ["prune.methods=['imp']"])
    (res,) = run_experiment(cfg, tmp_path / "runs")
    rows = res.rounds
    assert rows[0].inner_test_acc == res.dense.test_acc  # k=0: round 1 trains the dense net
    for prev, cur in zip(rows, rows[1:]):
        assert cur.inner_test_acc == prev.val_acc and cur.inner_train_s == prev.val_train_s


def test_seeded_cpu_runs_reproduce_the_same_masks(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile))
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    same_masks(masks_of(tmp_path / "a", a), masks_of(tmp_path / "b", b))
    other = run_experiment(replace(cfg, run=replace(cfg.run, seeds=[1])), tmp_path / "c")
    first_a = masks_of(tmp_path / "a", a)[("imp", 0)][0]
    first_c = masks_of(tmp_path / "c", other)[("imp", 1)][0]
    assert any(not torch.equal(first_a[n], first_c[n]) for n in first_a)  # another seed, another mask


def test_stopped_run_resumes_to_identical_masks(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile))
    full = run_experiment(cfg, tmp_path / "full")
    stop = threading.Event()
    seen = []

    def sink(ev):
        seen.append(ev)
        if isinstance(ev, RoundDone) and ev.row["round"] == 2:
            stop.set()  # stop mid-experiment, after round 2 of the first run

    partial = run_experiment(cfg, tmp_path / "part", sink=sink, should_stop=stop.is_set)
    assert partial[0].status == "stopped" and len(partial[0].rounds) == 2
    resumed_events = []
    resumed = run_experiment(cfg, tmp_path / "part", sink=resumed_events.append)
    assert [r.status for r in resumed] == ["done"] * 3
    assert resumed_events[0].resumed_after == 2
    same_masks(masks_of(tmp_path / "full", full), masks_of(tmp_path / "part", resumed))
    # A rerun of a finished experiment skips every run.
    again = []
    run_experiment(cfg, tmp_path / "part", sink=again.append)
    assert again == []


def test_events_jsonl_is_typed_and_versioned(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), ["prune.methods=['random']"])
    (res,) = run_experiment(cfg, tmp_path / "runs")
    lines = (tmp_path / "runs" / res.run_id / "events.jsonl").read_text().splitlines()
    events = [event_from_dict(json.loads(line)) for line in lines]
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_done" and kinds.count("round_done") == 3
    assert all(json.loads(line)["v"] == 1 for line in lines)


def test_run_identity_is_a_pinned_canonical_hash():
    cfg = Config()
    ident = run_identity(cfg, "imp", 0, torch.device("cpu"))
    # Pinned: if these change, existing runs stop resuming. Change them only on purpose
    # (engine 2: device-side data order and augmentation, fused optimisers; new [run] keys at their defaults
    # leave these as they are).
    assert config_hash(ident) == "7ac5c78438dd56ae"
    assert config_hash(run_identity(cfg, "distilled", 3, torch.device("cuda"))) == "63dba26bf2684b9c"
    assert config_hash(ident) == config_hash(json.loads(json.dumps(ident)))
    assert config_hash({"b": 1, "a": [1.0, "x"]}) == config_hash({"a": [1.0, "x"], "b": 1})
    assert config_hash({"a": 1}) == "015abd7f5cc57a2d"
    assert config_hash({"a": 1.0}) != config_hash({"a": 1})
    ids = {p.run_id for p in Experiment(cfg, device="cpu").plans}
    assert len(ids) == len(cfg.prune.methods) * len(cfg.run.seeds)
    # Cosmetic settings do not change a run's identity; results-relevant ones do.
    renamed = replace(cfg, experiment=replace(cfg.experiment, name="other", description="x"))
    assert run_identity(renamed, "imp", 0, torch.device("cpu")) == ident
    assert run_identity(replace(cfg, train=replace(cfg.train, epochs=3)), "imp", 0, torch.device("cpu")) != ident


def test_run_threads_is_part_of_a_cpu_runs_identity_only_when_set(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), ["prune.methods=['imp']", "prune.rounds=1"])
    one, _ = load_profile(str(tiny_profile), ["prune.methods=['imp']", "prune.rounds=1", "run.threads=1"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "threads" not in run_identity(cfg, "imp", 0, cpu)  # unset: ids as before
    assert run_identity(one, "imp", 0, cpu)["threads"] == 1 and "threads" not in run_identity(one, "imp", 0, cuda)
    before = torch.get_num_threads()
    try:
        (res,) = run_experiment(one, tmp_path / "runs")
        assert res.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert len(list((tmp_path / "runs" / "cache" / "dense").glob("*.pt"))) == 1
    (other,) = run_experiment(cfg, tmp_path / "runs")  # default threads: another run, another dense baseline
    assert other.run_id != res.run_id and len(list((tmp_path / "runs" / "cache" / "dense").glob("*.pt"))) == 2
