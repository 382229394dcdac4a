"""The Ray executor when a node of the cluster dies mid-run: the run is submitted again, resumes on another
node after the last round that reached the driver's store, and ends with the results of an uninterrupted run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
from test_ray import events, profile_cfg, runs_of, same_masks, same_rounds, start_cluster  # noqa: E402

from dpcore.experiment import run_experiment  # noqa: E402
from dpcore.events import RoundDone, RunStarted  # noqa: E402


def test_a_node_killed_mid_run_resumes_elsewhere_with_identical_results(tiny_profile, tmp_path, monkeypatch):
    """The cluster gets a third node; the first round a run finishes there kills that node (the driver is
    paused in its sink meanwhile, and the run's task waits for the driver after each message), so the run
    is lost after one round reached the driver's store and must resume on another node."""
    monkeypatch.setenv("DPTUI_RAY_BACKPRESSURE", "1")
    if ray.is_initialized():
        ray.shutdown()
    c = start_cluster(2)
    victim = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        local = tmp_path / "local"
        killed: list[str] = []
        placed: dict[str, str] = {}

        def sink(ev):
            if isinstance(ev, RunStarted):
                placed[ev.run_id] = ev.node
            if isinstance(ev, RoundDone) and not killed and victim.node_id[:8] in placed.get(ev.run_id, ""):
                killed.append(ev.run_id)
                c.remove_node(victim)

        remote = tmp_path / "ray"
        # Three runs on three one-CPU nodes: one of them starts on the victim.
        cfg3 = profile_cfg(tiny_profile, "prune.rounds=4", 'prune.methods=["imp", "random", "distilled"]',
                           "run.seeds=[0]", 'run.executor="ray"')
        run_experiment(profile_cfg(tiny_profile, "prune.rounds=4", 'prune.methods=["imp", "random", "distilled"]',
                                   "run.seeds=[0]"), local)
        results = run_experiment(cfg3, remote, sink=sink)
    finally:
        ray.shutdown()
        c.shutdown()
    assert killed, "no run was placed on the victim node"
    rid = killed[0]
    assert {r.status for r in results} == {"done"}
    got, want = runs_of(remote), runs_of(local)
    for run_id in got:
        same_rounds(want[run_id], got[run_id])
        same_masks(local / run_id, remote / run_id, 4)
    starts = [e for e in events(remote / rid) if e["kind"] == "run_started"]
    assert len(starts) == 2  # the first attempt and the one after the kill
    assert starts[1]["resumed_after"] >= 1  # went on from the round that had reached the driver's store
    assert victim.node_id[:8] in starts[0]["node"] and victim.node_id[:8] not in starts[1]["node"]
    assert victim.node_id[:8] not in got[rid]["node"]


def test_a_driver_killed_mid_run_is_restarted_and_resumes_its_runs(tiny_profile, tmp_path):
    """SIGKILL the driver (``dptui --headless --executor ray``) once a round has reached its store: Ray ends the
    tasks it owned; the same command again resumes each run after its last round there, with the results of
    an uninterrupted run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    c = start_cluster(2)
    try:
        env = {**os.environ, "RAY_ADDRESS": c.address, "DPTUI_RAY_BACKPRESSURE": "1"}
        store, local = tmp_path / "ray", tmp_path / "local"
        args = ["--profile", str(tiny_profile), "--set", "run.threads=1", "--set", "prune.rounds=6",
                "--set", "train.epochs=3", "--set", 'prune.methods=["imp", "random"]']
        cmd = [sys.executable, "-m", "dptui", "--headless", "--runs-dir", str(store), "--executor", "ray", *args]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(store.glob("*/round_001.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the driver ended before a round arrived"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = {p.parent.name: len(list(p.parent.glob("round_*.json"))) for p in store.glob("*/round_001.json")}
        assert all(n < 6 for n in before.values())  # killed mid-run
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        c.shutdown()
    cfg = profile_cfg(tiny_profile, "prune.rounds=6", "train.epochs=3", 'prune.methods=["imp", "random"]',
                      "run.seeds=[0]")
    run_experiment(cfg, local)
    got, want = runs_of(store), runs_of(local)
    assert got.keys() == want.keys()
    for rid in got:
        same_rounds(want[rid], got[rid])
        same_masks(local / rid, store / rid, 6)
    for rid, n in before.items():
        starts = [e for e in events(store / rid) if e["kind"] == "run_started"]
        assert starts[-1]["resumed_after"] >= n  # went on from what the first driver had stored
    assert json.loads((store / rid / "results.json").read_text())["status"] == "done"
