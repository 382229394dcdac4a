"""The front door (dpcore.experiment): methods as strategies, N runs at once with identical results, claims that
keep two processes on one store from doing the same work, and a Ray address where nothing listens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpcore.claims import Claim, claim_path, holder
from dpcore.experiment import Experiment
from dpcore.masks import full_mask, prunable
from dpcore.methods import PruningMethod, base
from dpcore.safe_load import safe_torch_load
from dpcore.store import RunDir
from test_cli import cli_env, dptui

WAIT_S = 240  # a generous bound for a state to be reached; the tests never sleep for a fixed time


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def started(runs: Path) -> dict[str, int]:
    """run id -> how many times it started (``run_started`` events in its file)."""
    return {p.parent.name: p.read_text().count('"kind":"run_started"') for p in runs.glob("*/events.jsonl")}


# -------------------------------------------------------------------------------------- strategies
class SmallestAtInit(PruningMethod):
    """A toy method: one shot from the initial weights, the smallest magnitudes cut (no training)."""

    name = "toy-smallest-at-init"

    def prune(self, run, model, mask, r, kw):
        from dpcore.masks import magnitude_prune

        return magnitude_prune(model, full_mask(model), **kw)  # the model holds its initial weights here

    def time_to_mask(self, before, inner, prune_s, rewind_s):
        return rewind_s + prune_s


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch, tmp_path, tiny_profile):
    monkeypatch.setitem(base._REGISTRY, SmallestAtInit.name, SmallestAtInit)  # = register(SmallestAtInit)
    exp = Experiment.from_profile(str(tiny_profile), [f"prune.methods=['imp', '{SmallestAtInit.name}']"],
                                  runs_dir=tmp_path / "runs")
    assert [p.method for p in exp.plans] == ["imp", SmallestAtInit.name]
    results = exp.run()
    toy = next(r for r in results if r.method == SmallestAtInit.name)
    assert toy.status == "done" and [row.inner_train_s for row in toy.rounds] == [0.0, 0.0, 0.0]
    from dpcore.engine import Run

    model = Run(exp.cfg, exp.plans[1], exp.check().dataset, exp.runs_dir).new_model()  # the same initial weights
    for row in toy.rounds:  # in each layer, the weights cut are the smallest initial ones
        mask = RunDir(exp.runs_dir, toy.run_id).load_mask(row.round)
        for name, p in prunable(model).items():
            w = p.detach().abs()
            if (~mask[name]).any():
                assert float(w[~mask[name]].max()) <= float(w[mask[name]].min())
        assert abs(row.sparsity - (1 - 0.8 ** row.round)) < 0.02
    assert any(SmallestAtInit.name in str(row.get("method")) for t in exp.tables(results) for row in t.rows)
    monkeypatch.delitem(base._REGISTRY, SmallestAtInit.name)
    with pytest.raises(Exception, match="must be a non-empty list of"):
        Experiment.from_profile(str(tiny_profile), [f"prune.methods=['{SmallestAtInit.name}']"])


# -------------------------------------------------------------------------------------- N at once
def test_two_runs_at_once_give_the_same_masks_and_accuracies_as_one_at_a_time(tmp_path, tiny_profile):
    overrides = ["run.seeds=[0, 1]", "run.threads=1"]
    one = Experiment.from_profile(str(tiny_profile), [*overrides, "run.jobs=1"], runs_dir=tmp_path / "one")
    two = Experiment.from_profile(str(tiny_profile), [*overrides, "run.jobs=2"], runs_dir=tmp_path / "two")
    assert two.capacity().jobs == 2 and two.capacity().threads == 1
    assert [p.run_id for p in one.plans] == [p.run_id for p in two.plans]  # run.jobs is not part of a run's id
    events = []
    a, b = one.run(), two.run(sink=events.append)
    assert [r.status for r in b] == ["done"] * 6 and [r.threads for r in b] == [1] * 6
    for ra, rb in zip(a, b):
        assert [row.val_acc for row in ra.rounds] == [row.val_acc for row in rb.rounds]
        assert [row.inner_test_acc for row in ra.rounds] == [row.inner_test_acc for row in rb.rounds]
        for r in (1, 3):
            ma, mb = (RunDir(root, ra.run_id).load_mask(r) for root in (one.runs_dir, two.runs_dir))
            assert all(torch.equal(ma[n], mb[n]) for n in ma)
    assert {ev.run_id for ev in events if ev.kind == "run_done"} == {p.run_id for p in two.plans}  # events came back
    assert all(n == 1 for n in started(two.runs_dir).values())


# -------------------------------------------------------------------------------------- claims
def test_a_claim_names_its_holder_and_is_released_when_its_process_dies(tmp_path):
    path = claim_path(tmp_path, "run", "0123456789abcdef")
    code = ("import sys, time; from dpcore.claims import Claim; c = Claim(sys.argv[1]); c.acquire(); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        mine = Claim(path)
        assert not mine.try_acquire()
        assert holder(path).pid == proc.pid and f"process {proc.pid}" in holder(path).line()
    finally:
        proc.kill()
        proc.wait()
    assert mine.try_acquire()  # the kernel released the dead process's lock
    mine.release()


def spawn_headless(profile: Path, runs: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dptui", "--headless", "--profile", str(profile), "--runs-dir",
                             str(runs), *extra], stdout=out.open("w"), stderr=subprocess.STDOUT, env=cli_env())


def test_two_headless_drivers_on_one_store_run_every_run_once(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    exp = Experiment.from_profile(str(tiny_profile), ["run.seeds=[0, 1]"], runs_dir=runs)
    first = exp.plans[0]
    held = Claim(claim_path(runs, "run", first.run_id))  # both drivers meet it taken: each must wait for it
    held.acquire()
    outs = [tmp_path / "a.out", tmp_path / "b.out"]
    procs = [spawn_headless(tiny_profile, runs, out, "--set", "run.seeds=[0, 1]") for out in outs]
    try:
        wait_until(lambda: all(f"waiting for this run ({first.label} seed 0)" in o.read_text() for o in outs),
                   "both drivers to wait for the held run")
        assert all("another process has it, process" in o.read_text() for o in outs)
        held.release()
        for p in procs:
            assert p.wait(timeout=WAIT_S) == 0, [o.read_text() for o in outs]
    finally:
        held.release()
        for p in procs:
            p.kill()
    assert started(runs) == {p.run_id: 1 for p in exp.plans}  # every run executed once, by one of them
    syn = [d for d in (runs / "cache" / "synthetic").iterdir() if not d.name.startswith(".")]
    assert len(syn) == 1  # the synthetic set was distilled once
    tables = [o.read_text().split("Rounds", 1)[1].split("exports:", 1)[0] for o in outs]
    assert tables[0] == tables[1]  # both print the same tables


def test_a_dashboard_launch_while_a_headless_run_goes_runs_every_run_once(tmp_path, tiny_profile):
    from dpcore.profiles import load_profile
    from dptui.launches.launcher import Launcher

    runs = tmp_path / "runs"
    exp = Experiment.from_profile(str(tiny_profile), runs_dir=runs)
    first = exp.plans[0]
    held = Claim(claim_path(runs, "run", first.run_id))
    held.acquire()
    out = tmp_path / "headless.out"
    proc = spawn_headless(tiny_profile, runs, out)
    launcher = Launcher(runs, gpu_count=0)
    cfg, _ = load_profile(str(tiny_profile))
    try:
        wait_until(lambda: "waiting for this run" in out.read_text(), "the headless driver to wait for the held run")
        launch_dir, ids = launcher.launch(cfg, ["cpu"])
        assert sorted(ids) == sorted(p.run_id for p in exp.plans)
        wait_until(lambda: "waiting for this run" in (launch_dir / f"{first.run_id}.log").read_text()
                   if (launch_dir / f"{first.run_id}.log").exists() else False, "the launch's run to wait too")
        held.release()
        assert proc.wait(timeout=WAIT_S) == 0, out.read_text()
        state = launch_dir / "state.json"
        wait_until(lambda: state.exists() and "finished_at" in json.loads(state.read_text()), "the launch to finish")
    finally:
        held.release()
        proc.kill()
    assert started(runs) == {p.run_id: 1 for p in exp.plans}
    rcs = {rid: r["rc"] for rid, r in json.loads((launch_dir / "state.json").read_text())["runs"].items()}
    assert set(rcs.values()) == {0}
    for p in exp.plans:  # the store holds one finished copy of each run
        res = json.loads((runs / p.run_id / "results.json").read_text())
        assert res["status"] == "done" and len(res["rounds"]) == 3
        assert safe_torch_load(runs / p.run_id / "round_003.pt")["round"] == 3


# -------------------------------------------------------------------------------------- Ray
def test_a_ray_address_where_nothing_listens_is_one_line_and_exit_2(tmp_path, tiny_profile):
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(tmp_path / "runs"),
                 "--executor", "ray", "--ray-address", "127.0.0.1:1", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray cluster at 127.0.0.1:1")
    assert "ray start --head" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "runs").glob("*/results.json"))  # nothing ran
