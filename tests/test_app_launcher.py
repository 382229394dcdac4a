"""The launcher and the detached queue runner, with stub run processes (fast): queueing per device slot and
its places (``run.jobs``), exit codes and error lines, cancel (queued and running), resume, sessions."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dpcore import parallel
from dpcore.profiles import load_profile
from dptui.app.model import build_view
from dptui.launches.launcher import Launcher

STUB = """
import os, pathlib, sys, time
run_id, mode = sys.argv[1], sys.argv[2]
print("stub run", run_id, "threads", os.environ.get("DPTUI_THREADS_PER_RUN"), flush=True)
if mode == "fail":
    print("error: data.path '/nowhere/x.npz' does not exist", flush=True)
    sys.exit(2)
if mode.startswith("sleep"):
    time.sleep(float(mode[5:]))
if mode.startswith("gate:"):  # started: say so, then run until the test opens the gate (or 5 minutes pass)
    gate = pathlib.Path(mode[5:])
    (gate / (run_id + ".started")).touch()
    end = time.monotonic() + 300
    while not (gate / (run_id + ".go")).exists() and time.monotonic() < end:
        time.sleep(0.02)
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


def run_state(launch_dir, run_id):
    return state(launch_dir).get("runs", {}).get(run_id, {})


def running(launch_dir, run_id, gate) -> bool:
    """The run's process has started (its gate says so) and its runner has recorded it."""
    return gate.started(run_id) and run_state(launch_dir, run_id).get("state") == "running"


class Gate:
    """Stub runs in ``gate:`` mode run until the test opens their gate: the test, not the clock, decides when
    a run ends."""

    def __init__(self, folder: Path):
        self.dir = folder
        folder.mkdir()

    def mode(self) -> str:
        return f"gate:{self.dir}"

    def started(self, run_id: str) -> bool:
        return (self.dir / f"{run_id}.started").exists()

    def open(self, run_id: str) -> None:
        (self.dir / f"{run_id}.go").touch()


@pytest.fixture
def gate(tmp_path):
    gate = Gate(tmp_path / "gate")
    yield gate
    for started in gate.dir.glob("*.started"):  # a failed test leaves no stub behind
        gate.open(started.name.removesuffix(".started"))


@pytest.fixture
def cfg(tiny_profile):
    """The tiny profile (3 runs), one run at a time on the CPU (``run.jobs = 1``)."""
    return load_profile(str(tiny_profile), ["run.jobs=1"])[0]


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


def test_with_one_cpu_place_a_second_launch_waits_for_the_first(tmp_path, cfg, gate):
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {ids[0]: gate.mode(), ids[1]: gate.mode()}
    a, _ = launcher.launch(cfg, ["cpu"], only=[ids[0]])
    wait(lambda: running(a, ids[0], gate), what="launch a's run")
    b, _ = launcher.launch(cfg, ["cpu"], only=[ids[1]])
    # b's runner found the CPU's one place taken and waits; a's run holds it until its gate opens.
    wait(lambda: state(b).get("waiting") == ["cpu"], what="launch b to wait for the CPU")
    assert run_state(b, ids[1]).get("state") == "queued" and not gate.started(ids[1])
    assert launcher.entries()[ids[1]].state == "queued" and launcher.entries()[ids[0]].place == "cpu#0"
    gate.open(ids[0])
    wait(lambda: running(b, ids[1], gate), what="launch b's run, once a's ended")
    ran_a, ran_b = run_state(a, ids[0]), run_state(b, ids[1])
    assert ran_a["state"] == "exited" and ran_b["started_at"] >= ran_a["ended_at"]
    assert ran_a["place"] == ran_b["place"] == "cpu#0" and ran_a["slot"] == ran_b["slot"] == "cpu"
    gate.open(ids[1])
    wait(lambda: "finished_at" in state(a) and "finished_at" in state(b), what="both launches")
    capacity = {"cpu": {"jobs": 1, "threads": parallel.capacity("cpu", 1, 0).threads}}  # one run: every core
    assert json.loads((a / "launch.json").read_text())["capacity"] == capacity


def test_with_two_cpu_places_two_launches_run_together_and_a_third_waits(tmp_path, cfg, gate):
    cfg = replace(cfg, run=replace(cfg.run, jobs=2))
    threads = parallel.capacity("cpu", 2, 0).threads  # the cores split between the two places
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {rid: gate.mode() for rid in ids}
    a, _ = launcher.launch(cfg, ["cpu"], only=[ids[0]])
    wait(lambda: running(a, ids[0], gate), what="launch a's run")
    b, _ = launcher.launch(cfg, ["cpu"], only=[ids[1]])
    wait(lambda: running(b, ids[1], gate), what="launch b's run, next to a's")
    assert running(a, ids[0], gate) and not gate.started(ids[2])  # both at once
    assert {run_state(a, ids[0])["place"], run_state(b, ids[1])["place"]} == {"cpu#0", "cpu#1"}
    assert (tmp_path / "runs" / "launches" / "slot-cpu.1.lock").exists()
    c, _ = launcher.launch(cfg, ["cpu"], only=[ids[2]])
    wait(lambda: state(c).get("waiting") == ["cpu"], what="launch c to wait: both places are taken")
    assert run_state(c, ids[2]).get("state") == "queued" and not gate.started(ids[2])
    gate.open(ids[1])
    wait(lambda: running(c, ids[2], gate), what="launch c's run, in the place b's run left")
    assert run_state(c, ids[2])["place"] == run_state(b, ids[1])["place"]
    assert run_state(c, ids[2])["started_at"] >= run_state(b, ids[1])["ended_at"]
    assert run_state(a, ids[0])["state"] == "running"  # a's run went on all along
    gate.open(ids[0])
    gate.open(ids[2])
    wait(lambda: all("finished_at" in state(d) for d in (a, b, c)), what="the three launches")
    spec = json.loads((a / "launch.json").read_text())
    assert spec["capacity"] == {"cpu": {"jobs": 2, "threads": threads}}
    for d, rid in ((a, ids[0]), (b, ids[1]), (c, ids[2])):  # each run was given its share of the cores
        assert f"stub run {rid} threads {threads}" in (d / f"{rid}.log").read_text()


def test_one_launch_with_two_places_runs_two_of_its_runs_at_once(tmp_path, cfg, gate):
    cfg = replace(cfg, run=replace(cfg.run, jobs=2))
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    launcher.modes = {rid: gate.mode() for rid in ids}
    d, _ = launcher.launch(cfg, ["cpu"])
    wait(lambda: running(d, ids[0], gate) and running(d, ids[1], gate), what="the launch's first two runs together")
    assert not gate.started(ids[2]) and run_state(d, ids[2]).get("state") == "queued"
    gate.open(ids[0])
    wait(lambda: running(d, ids[2], gate), what="the third run")
    runs = state(d)["runs"]
    assert runs[ids[2]]["started_at"] >= runs[ids[0]]["ended_at"]  # only once a place was free
    assert runs[ids[2]]["place"] == runs[ids[0]]["place"] and runs[ids[1]]["state"] == "running"
    gate.open(ids[1])
    gate.open(ids[2])
    wait(lambda: "finished_at" in state(d), what="the launch")
    assert [state(d)["runs"][r]["rc"] for r in ids] == [0, 0, 0]


def test_a_launch_keeps_its_runs_estimates_and_its_places_for_their_eta(tmp_path, cfg):
    from dptui.app.model import run_eta

    cfg = replace(cfg, run=replace(cfg.run, jobs=2))
    launcher = StubLauncher(tmp_path / "runs")
    ids = [p.run_id for p in launcher.plan(cfg, ["cpu"])[1]]
    d, _ = launcher.launch(cfg, ["cpu"], estimates={ids[0]: 42.0})  # the Launch screen's, when it had one
    entries = launcher.entries()
    assert entries[ids[0]].info["est_wall_s"] == 42.0 and entries[ids[1]].info["est_wall_s"] is None
    assert {e.info["places"] for e in entries.values()} == {2}
    wait(lambda: "finished_at" in state(d), what="the launch")
    queued = replace(entries[ids[0]], state="queued")  # as it was before its runner started it
    assert run_eta(build_view(ids[0], None, None, queued)) == 42.0


def test_the_runner_imports_neither_torch_nor_the_app(tmp_path):
    code = ("import sys, dptui.launches.runner, dptui.launches.launcher; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'textual') or m.startswith('dptui.app')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpu_slots_get_their_places_with_cuda_visible_devices(tmp_path, cfg, monkeypatch):
    launcher = StubLauncher(tmp_path / "runs")
    launcher._gpus = 2
    assert launcher.device_slots() == ["gpu0", "gpu1"]
    cfg_gpu, plans = launcher.plan(cfg, ["gpu0", "gpu1"])
    assert cfg_gpu.run.device == "cuda" and len(plans) == 3
    assert {s: c.jobs for s, c in launcher.capacity(cfg_gpu, ["gpu0", "gpu1"]).items()} == {"gpu0": 1, "gpu1": 1}
    auto = replace(cfg_gpu, run=replace(cfg_gpu.run, jobs=0))
    assert {c.jobs for c in launcher.capacity(auto, ["gpu0", "gpu1"]).values()} == {parallel.RUNS_PER_GPU}
    from dptui.launches import runner

    seen = {}

    class FakeProc:
        pid = 12345

        def __init__(self, argv, env, **kw):
            seen[argv[-2]] = (env.get("CUDA_VISIBLE_DEVICES"), env.get(parallel.THREADS_ENV))

        def wait(self, timeout=None):
            return 0

    launch_dir = tmp_path / "L"
    launch_dir.mkdir()
    runs = [{"run_id": p.run_id, "argv": ["x", p.run_id, "ok"], "log": f"{p.run_id}.log"} for p in plans]
    capacity = {"gpu0": {"jobs": 2, "threads": 4}, "gpu1": {"jobs": 2, "threads": 4}}
    (launch_dir / "launch.json").write_text(json.dumps({"runs_dir": str(tmp_path / "runs"), "slots": ["gpu0", "gpu1"],
                                                        "runs": runs, "capacity": capacity}))
    monkeypatch.delenv(parallel.THREADS_ENV, raising=False)
    monkeypatch.setattr(runner.subprocess, "Popen", FakeProc)
    runner.QueueRunner(launch_dir).run()
    assert set(seen) == {p.run_id for p in plans} and {cuda for cuda, _ in seen.values()} <= {"0", "1"}
    assert {threads for _, threads in seen.values()} == {None}  # the CPU's split is for CPU runs
    done = json.loads((launch_dir / "state.json").read_text())["runs"]
    for rid, (cuda, _) in seen.items():
        assert done[rid]["slot"] == f"gpu{cuda}" and done[rid]["place"] in (f"gpu{cuda}#0", f"gpu{cuda}#1")
    assert (tmp_path / "runs" / "launches" / "slot-gpu0.lock").exists()
