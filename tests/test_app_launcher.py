"""The launcher and the detached queue runner, with stub run processes (fast): queueing per device slot,
exit codes and error lines, cancel (queued and running), resume, sessions."""

import json
import os
import sys
import time

import pytest

from dpcore.profiles import load_profile
from dptui.app.launcher import Launcher
from dptui.app.model import build_view

STUB = """
import sys, time
run_id, mode = sys.argv[1], sys.argv[2]
print("stub run", run_id, flush=True)
if mode == "fail":
    print("error: data.path '/nowhere/x.npz' does not exist", flush=True)
    sys.exit(2)
if mode.startswith("sleep"):
    time.sleep(float(mode[5:]))
"""


class StubLauncher(Launcher):
    """Runs ``python -c STUB`` instead of the real ``dptui --headless``."""

    def __init__(self, *args, modes=None, **kw):
        super().__init__(*args, gpu_count=0, **kw)
        self.modes = modes or {}

    def argv(self, launch_dir, run_id):
        return [sys.executable, "-c", STUB, run_id, self.modes.get(run_id, "ok")]


def wait(predicate, timeout=90.0, what=""):  # an upper bound: generous for loaded CI machines
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)


def state(launch_dir):
    path = launch_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def cfg(tiny_profile):
    return load_profile(str(tiny_profile))[0]


def test_runs_queue_one_at_a_time_on_the_cpu_and_failures_are_recorded(tmp_path, cfg):
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {ids[1]: "fail", ids[0]: "sleep0.3"}
    launch_dir, started = launcher.launch(cfg, ["cpu"])
    assert started == ids and (launch_dir / "profile.toml").exists()
    spec = json.loads((launch_dir / "launch.json").read_text())
    assert spec["slots"] == ["cpu"] and [r["run_id"] for r in spec["runs"]] == ids
    wait(lambda: "finished_at" in state(launch_dir), what="the queue to finish")
    runs = state(launch_dir)["runs"]
    assert [runs[i]["rc"] for i in ids] == [0, 2, 0]
    for a, b in zip(ids, ids[1:]):  # one at a time
        assert runs[b]["started_at"] >= runs[a]["ended_at"]
    entries = launcher.entries()
    failed = build_view(ids[1], None, None, entries[ids[1]])
    assert failed.status == "failed" and failed.error == "data.path '/nowhere/x.npz' does not exist"
    assert build_view(ids[2], None, None, entries[ids[2]]).status == "pending"  # exited 0, files say the rest
    assert "stub run" in (launch_dir / f"{ids[0]}.log").read_text()


def test_cancel_a_running_and_a_queued_run_then_resume(tmp_path, cfg):
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {ids[0]: "sleep30"}
    launch_dir, _ = launcher.launch(cfg, ["cpu"])
    wait(lambda: launcher.entries()[ids[0]].pid_alive, what="the first run to start")
    entries = launcher.entries()
    first = entries[ids[0]]
    runner_pid = state(launch_dir)["runner_pid"]
    # Detached: the runner and each run have their own session, so a hangup of the app's terminal misses them.
    assert os.getsid(runner_pid) == runner_pid != os.getsid(0)
    assert os.getpgid(first.pid) == first.pid
    assert build_view(ids[0], None, None, first).status == "running"
    assert "will not start" in launcher.cancel(entries[ids[1]])
    assert "stops after the current step" in launcher.cancel(first)
    wait(lambda: "finished_at" in state(launch_dir), what="the queue to finish")
    entries = launcher.entries()
    assert entries[ids[0]].rc != 0 and build_view(ids[0], None, None, entries[ids[0]]).status == "stopped"
    assert entries[ids[1]].state == "cancelled" and build_view(ids[1], None, None, entries[ids[1]]).status == "cancelled"
    assert entries[ids[2]].rc == 0  # the queue went on
    again, only = launcher.resume(ids[1], entries[ids[1]])
    assert only == [ids[1]] and again != launch_dir
    assert (again / "profile.toml").read_text() == (launch_dir / "profile.toml").read_text()
    wait(lambda: "finished_at" in state(again), what="the resumed run")
    assert launcher.entries()[ids[1]].launch_dir == again and launcher.entries()[ids[1]].rc == 0


def test_two_launches_share_the_cpu_slot(tmp_path, cfg):
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {ids[0]: "sleep0.8"}
    a, _ = launcher.launch(cfg, ["cpu"], only=[ids[0]])
    wait(lambda: state(a).get("runs", {}).get(ids[0], {}).get("state") == "running", what="launch a to start")
    b, _ = launcher.launch(cfg, ["cpu"], only=[ids[1]])
    wait(lambda: "finished_at" in state(b) and "finished_at" in state(a), what="both launches")
    assert state(b)["runs"][ids[1]]["started_at"] >= state(a)["runs"][ids[0]]["ended_at"]


def test_gpu_slots_get_one_run_each_with_cuda_visible_devices(tmp_path, cfg, monkeypatch):
    launcher = StubLauncher(tmp_path / "runs")
    launcher._gpus = 2
    assert launcher.device_slots() == ["gpu0", "gpu1"]
    cfg_gpu, plans = launcher.plan(cfg, ["gpu0", "gpu1"])
    assert cfg_gpu.run.device == "cuda" and len(plans) == 3
    from dptui.app import runner

    seen = {}

    class FakeProc:
        pid = 12345

        def __init__(self, argv, env, **kw):
            seen[argv[-2]] = env.get("CUDA_VISIBLE_DEVICES")

        def wait(self, timeout=None):
            return 0

    launch_dir = tmp_path / "L"
    launch_dir.mkdir()
    runs = [{"run_id": p.run_id, "argv": ["x", p.run_id, "ok"], "log": f"{p.run_id}.log"} for p in plans]
    (launch_dir / "launch.json").write_text(json.dumps({"runs_dir": str(tmp_path / "runs"), "slots": ["gpu0", "gpu1"],
                                                        "runs": runs}))
    monkeypatch.setattr(runner.subprocess, "Popen", FakeProc)
    runner.QueueRunner(launch_dir).run()
    assert set(seen) == {p.run_id for p in plans} and set(seen.values()) <= {"0", "1"}
    assert (tmp_path / "runs" / "launches" / "slot-gpu0.lock").exists()
