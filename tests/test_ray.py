"""The Ray executor on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): the
same results and masks as the local executor, a failing run failing alone, the CLI (a node killed mid-run:
test_ray_faults.py).

Workers never see the driver's run store: each run works in a private folder on its node and everything
reaches the driver's store through the task's streamed messages (``run.ray_shared_store`` stays off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from dpcore.experiment import run_experiment  # noqa: E402
from dpcore.events import RoundDone  # noqa: E402
from dpcore.profiles import load_profile  # noqa: E402
from dpcore.safe_load import safe_torch_load  # noqa: E402
from app_fixtures import on_screen, run_async, screen_text, settled, wait_for  # noqa: E402
from dptui.app import make_app  # noqa: E402
from dptui.launches.launcher import RAY_SLOT  # noqa: E402
from textual.widgets import SelectionList, Static  # noqa: E402

TIMING = {"inner_train_s", "prune_s", "val_train_s", "compile_s", "time_to_mask_s", "time_to_mask_validated_s"}


def start_cluster(nodes: int) -> Cluster:
    """A head and ``nodes - 1`` worker nodes, one CPU each, so concurrent runs land on different nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = start_cluster(2)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield c
    ray.shutdown()
    c.shutdown()


def profile_cfg(path: Path, *overrides: str):
    cfg, _ = load_profile(str(path), ["run.threads=1", "run.seeds=[0, 1]", *overrides])
    return cfg


def runs_of(store: Path) -> dict[str, dict]:
    out = {}
    for d in sorted(p for p in store.iterdir() if (p / "results.json").exists()):
        out[d.name] = json.loads((d / "results.json").read_text())
    return out


def same_rounds(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "done"
    assert len(a["rounds"]) == len(b["rounds"]) == a["rounds_planned"]
    for ra, rb in zip(a["rounds"], b["rounds"]):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}


def same_masks(a: Path, b: Path, rounds: int) -> None:
    for r in range(1, rounds + 1):
        ma = safe_torch_load(a / f"round_{r:03d}.pt")["mask"]
        mb = safe_torch_load(b / f"round_{r:03d}.pt")["mask"]
        assert ma.keys() == mb.keys()
        for name in ma:
            assert torch.equal(ma[name], mb[name]), (a.name, r, name)


def status_line(app) -> str:
    return str(app.screen.query_one("#launch-status", Static).render())


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_ray_runs_equal_local_runs_and_spread_over_nodes(cluster, tiny_profile, tmp_path):
    cfg = profile_cfg(tiny_profile)
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_experiment(cfg, local)
    seen = []
    results = run_experiment(profile_cfg(tiny_profile, 'run.executor="ray"'), remote, sink=seen.append)

    assert len(results) == 6 and {r.status for r in results} == {"done"}
    want, got = runs_of(local), runs_of(remote)
    assert want.keys() == got.keys()  # the same run ids: the executor is not part of a run's identity
    for rid in want:
        same_rounds(want[rid], got[rid])
        same_masks(local / rid, remote / rid, want[rid]["rounds_planned"])
        assert got[rid]["node"]  # where it ran, for the dashboard
        started = [e for e in events(remote / rid) if e["kind"] == "run_started"]
        assert started and started[-1]["node"] == got[rid]["node"]
    nodes = {r["node"].split(" ")[0] for r in got.values()}
    assert len(nodes) == 2, nodes  # spread over both nodes
    # The events reached the driver live, as typed events, in each run's order.
    rounds = [e for e in seen if isinstance(e, RoundDone)]
    assert len(rounds) == 6 * cfg.prune.rounds
    # The shared stages ran once: one dense baseline per seed and one synthetic set in the driver's cache.
    assert len(list((remote / "cache" / "dense").glob("*.pt"))) == 2
    assert len([d for d in (remote / "cache" / "synthetic").iterdir() if (d / "images_best.pt").exists()]) == 1
    # A second call finds every run done in the driver's store and submits nothing.
    again = run_experiment(profile_cfg(tiny_profile, 'run.executor="ray"'), remote)
    assert [r.run_id for r in again] == [r.run_id for r in results]


def test_a_failing_run_fails_alone(cluster, tiny_profile, tmp_path):
    text = tiny_profile.read_text().replace('methods = ["imp", "distilled", "random"]', 'methods = ["imp", "distilled"]')
    text += """
[[synthetic.variants]]
method = "dm"
ipc = 2
params = { iterations = 3, batch_real = 16 }

[[synthetic.variants]]
name = "diverging"
method = "dm"
ipc = 2
params = { iterations = 3, batch_real = 16, lr_img = 1e38 }
"""
    path = tmp_path / "fails.toml"
    path.write_text(text)
    cfg, _ = load_profile(str(path), ["run.threads=1", 'run.executor="ray"'])
    results = {(r.method, r.variant): r for r in run_experiment(cfg, tmp_path / "store")}
    assert results[("imp", "")].status == "done"
    assert results[("distilled", "dm ipc2")].status == "done"
    bad = results[("distilled", "diverging")]
    assert bad.status == "failed" and "lr_img" in bad.error
    assert events(tmp_path / "store" / bad.run_id)[-1]["kind"] == "run_failed"


def test_cli_runs_on_ray_and_shows_the_cluster(cluster, tiny_profile, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "COLUMNS": "200"}
    status = subprocess.run([sys.executable, "-m", "dptui", "cluster", "--json"], capture_output=True, text=True,
                            env=env, timeout=180)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout.strip().splitlines()[-1])
    assert len([n for n in info["nodes"] if n["alive"]]) == 2 and "2 nodes" in info["line"]
    proc = subprocess.run([sys.executable, "-m", "dptui", "--headless", "--profile", str(tiny_profile),
                           "--executor", "ray", "--runs-dir", str(tmp_path / "store"), "--set", "run.threads=1",
                           "--set", 'prune.methods=["imp", "random"]', "--set", 'run.log=["tensorboard"]'],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " @ " in proc.stdout  # each run says which node it is on
    # The runs' TensorBoard files were written on their nodes and reached the driver's store.
    logs = list((tmp_path / "store").glob("*/tensorboard/events.out.tfevents.*"))
    assert len({p.parts[-3] for p in logs}) == 2
    assert "Ray" not in proc.stderr or "error" not in proc.stderr


def test_cli_asks_for_a_gpu_the_cluster_lacks(cluster, tiny_profile, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run([sys.executable, "-m", "dptui", "--headless", "--profile", str(tiny_profile),
                           "--executor", "ray", "--runs-dir", str(tmp_path / "store"), "--set", "run.gpus_per_run=0.5"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "gpus_per_run" in err[0] and "no node" in err[0]
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("*/results.json"))


@run_async
async def test_dashboard_launches_on_ray_shows_nodes_cancels_and_resumes(cluster, tiny_profile, tmp_path, monkeypatch):
    """The Launch screen offers the Ray cluster and shows its nodes; the launched runs show the node they run
    on; cancel (c) stops a Ray run after its current step and resume (r) finishes it on the cluster."""
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # the detached driver and `dptui cluster` inherit it
    runs = tmp_path / "runs"
    app = make_app(runs, profile=str(tiny_profile), gpu_count=0, blink=False, poll_s=0.2, follow_s=0.1,
                   overrides=['prune.methods=["imp"]', "prune.rounds=40", "train.epochs=10", "run.threads=1"])
    async with app.run_test(size=(110, 32)) as pilot:
        await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the empty store")
        await pilot.press("l")
        await wait_for(pilot, lambda: on_screen(app, "LaunchScreen") and app.screen.form_settled, what="the form")
        devices = app.screen.query_one("#devices", SelectionList)
        devices.deselect_all()
        devices.select(RAY_SLOT)
        await wait_for(pilot, lambda: "on Ray (2 nodes, 2 CPUs" in status_line(app), timeout=120,
                       what="the cluster's nodes in the status line")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: settled(app, "RunsScreen") and len(app.views) == 1
                       and app.screen.pending_select is None, what="the launched run")
        (rid,) = app.views
        await wait_for(pilot, lambda: app.views[rid].status == "running" and "@" in app.views[rid].device
                       and len(app.views[rid].rows) >= 1, timeout=180, what="the Ray run's first round and node")
        assert app.views[rid].device in screen_text(app).replace("\n", " ") or "@" in screen_text(app)
        app.screen.select(rid)
        await pilot.press("c")
        await wait_for(pilot, lambda: on_screen(app, "ConfirmModal"), what="the cancel question")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.views[rid].status == "stopped", timeout=120,
                       what=f"the run to stop (it is {app.views[rid].status} after {len(app.views[rid].rows)} rounds)")
        stopped_after = len(app.views[rid].rows)
        assert stopped_after < 40
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")
        await pilot.press("r")
        await wait_for(pilot, lambda: app.views[rid].status == "done", timeout=300, what="the resumed run to finish")
    results = json.loads((runs / rid / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == list(range(1, 41)) and results["node"]
    starts = [e for e in events(runs / rid) if e["kind"] == "run_started"]
    assert len(starts) == 2 and starts[1]["resumed_after"] == stopped_after
