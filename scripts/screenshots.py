"""Regenerate ``screenshots/*.svg``: every dashboard screen, from the real app, on real tiny runs.

    python scripts/screenshots.py                  # about 2-4 minutes on 2 CPU cores
    python scripts/screenshots.py --store /tmp/s   # keep (and on later calls reuse) the run store
    python scripts/screenshots.py --distillers runs   # Compare over a finished `mnist-distillers` experiment
    python scripts/screenshots.py --ray            # Runs and Launch with a launch on a 2-node local Ray cluster

1. Builds a run store of real runs (unless ``--store`` already has them): the quickstart profile made small
   (two seeds, so Compare draws the seeds' band; 4 rounds, 2 epochs, a 100-step DM set; the instability
   analysis of round 2 where the engine has analyses) run in-process by the engine, plus one launch whose
   data file does not exist (it fails).
2. Starts one more run detached through the app's launcher, so that Run detail is shown live.
3. Opens the app in a Pilot session at 120x36 and saves an SVG of each screen with
   ``App.save_screenshot`` (Textual's screenshot export), then cancels the live run.

Run it again whenever the UI changes (the snapshot tests in tests/test_app_snapshots.py say when).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "screenshots"
SIZE = (120, 36)
SMALL = ["run.seeds=[0, 1]", "run.device=\"cpu\"", "prune.rounds=4", "train.epochs=2",
         "synthetic.params.iterations=100", "synthetic.epochs=100"]


def build_store(runs: Path) -> None:
    from dpcore.config import Config
    from dpcore.experiment import run_experiment
    from dpcore.profiles import load_profile

    extra = ["analysis.instability_rounds=[2]"] if "analysis" in {f.name for f in fields(Config)} else []
    cfg, _ = load_profile("quickstart", SMALL + extra)
    print("running the small quickstart in-process (imp, distilled, random; 2 seeds, 4 rounds)...", flush=True)
    run_experiment(cfg, runs, sink=None)


def wait(what: str, predicate, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def start_side_runs(runs: Path):
    """A launch that fails (missing data file) and a live run; returns (launcher, failing id, live id)."""
    from dpcore.profiles import load_profile
    from dptui.app.follow import StoreScanner
    from dptui.launches.launcher import Launcher
    from dptui.app.model import build_view

    launcher = Launcher(runs, gpu_count=0)
    bad, _ = load_profile("quickstart", SMALL + ['prune.methods=["imp"]', 'run.seeds=[0]', 'data.dataset="npz"',
                                                 'data.path="missing/data.npz"'])
    scanner = StoreScanner(runs, launcher)

    def view(rid):
        snap = scanner.scan()
        return build_view(rid, snap.results.get(rid), None, snap.entries.get(rid))

    _, (bad_id,) = launcher.launch(bad, ["cpu"])
    print("waiting for the failing launch...", flush=True)
    wait("the failing run", lambda: view(bad_id).status == "failed")
    live, _ = load_profile("quickstart", SMALL + ['prune.methods=["imp"]', "run.seeds=[1]", "prune.rounds=12",
                                                  "train.epochs=4"])
    _, (live_id,) = launcher.launch(live, ["cpu"])  # after it: the failing run has left its CPU place
    print("waiting for two rounds of the live run...", flush=True)
    wait("the live run", lambda: len(view(live_id).rows) >= 2 and view(live_id).status == "running")
    return launcher, bad_id, live_id


async def shoot(runs: Path, bad_id: str, live_id: str) -> list[str]:
    from dptui.app import make_app

    app = make_app(Path(runs.name), blink=False, poll_s=0.3, follow_s=0.2, gpu_count=0,
                   overrides=["prune.rounds=4", "run.seeds=[0]"])
    saved = []

    async with app.run_test(size=SIZE) as pilot:
        async def settle(predicate=lambda: True, extra: float = 0.6, timeout: float = 30):
            for _ in range(int(timeout / 0.05)):
                if getattr(app.screen, "ready", False) and predicate():
                    break
                await pilot.pause(0.05)
            await pilot.pause(extra)

        def save(name: str) -> None:
            app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
            saved.append(f"{name}.svg")

        await settle(lambda: app.loaded and len(app.views) >= 5)
        screen = app.screen
        screen.select(live_id)
        await settle()
        save("runs")
        app.open_detail(live_id)
        await settle(lambda: live_id in app.lives and app.lives[live_id].epochs, extra=1.0, timeout=300)
        save("detail-live")
        app.pop_screen()
        app.open_detail(bad_id)
        await settle(lambda: app.log_tails.get(bad_id))
        save("detail-failed")
        app.pop_screen()
        done = [rid for rid, v in app.views.items() if v.status == "done"]
        app.open_compare(sorted(done, key=lambda r: app.views[r].sort_key()))
        await settle()
        save("compare")
        pick = app.screen.query_one("#pick")
        pick.focus()
        pick.highlighted = next(i for i in range(pick.option_count)
                                if app.views[pick.get_option_at_index(i).value].method == "imp")
        await pilot.press("b")  # imp's line pinned: every other line as its difference to it
        await settle(lambda: app.screen.baseline is not None)
        save("compare-baseline")
        await pilot.press("b")
        await settle(lambda: app.screen.baseline is None)
        await pilot.press("t")
        await settle()
        save("compare-speedup")
        app.pop_screen()
        order = {"distilled": 0, "imp": 1}
        with_curves = sorted((rid for rid in done if app.views[rid].results.instability),
                             key=lambda r: order.get(app.views[r].method, 9))
        app.open_interpolation((with_curves or done)[0])
        await settle()
        save("interpolation")
        app.pop_screen()
        app.open_launch()
        await settle(lambda: "valid" in str(app.screen.query_one("#launch-status").render())
                     and app.screen.estimate is not None and app.screen.estimate[0] == app.screen.estimate_wanted,
                     timeout=120)
        save("launch")
        app.pop_screen()
        await pilot.press("ctrl+t")
        await settle()
        save("runs-light")
    return saved


async def shoot_distillers(runs: Path, profile: str) -> list[str]:
    """Compare over the runs of a distiller-comparison profile already in ``runs`` (real results)."""
    from dpcore.experiment import Experiment
    from dptui.app import make_app

    ids = [p.run_id for p in Experiment.from_profile(profile, ["run.device=\"cpu\""], runs_dir=runs).plans]
    app = make_app(runs, blink=False, poll_s=0.3, follow_s=0.2, gpu_count=0)
    saved = []
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(600):
            if app.loaded and all(app.views.get(r) and app.views[r].status == "done" for r in ids):
                break
            await pilot.pause(0.05)
        missing = [r for r in ids if not (app.views.get(r) and app.views[r].status == "done")]
        if missing:
            raise SystemExit(f"{runs}: {len(missing)} runs of {profile} are not done; run it first")
        app.open_compare(sorted(ids, key=lambda r: app.views[r].sort_key()))
        for name, keys in (("compare-distillers", []), ("compare-distillers-table", ["t"])):
            for key in keys:
                await pilot.press(key)
            await pilot.pause(1.0)
            app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
            saved.append(f"{name}.svg")
    return saved


async def shoot_ray(runs: Path) -> list[str]:
    """Runs and Launch with a Ray launch: a 2-node Ray cluster on this machine (``ray.cluster_utils``), one
    launch from the app's launcher (its detached driver spreads the runs over the nodes), the Runs screen
    while they run, and the Launch screen with the Ray cluster picked."""
    import ray
    from ray.cluster_utils import Cluster

    from dpcore.profiles import load_profile
    from dptui.app import make_app
    from dptui.launches.launcher import RAY_SLOT, Launcher

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    saved: list[str] = []
    launcher = Launcher(runs, gpu_count=0)
    try:
        cfg, _ = load_profile("quickstart", SMALL + ["run.seeds=[0, 1]", "prune.rounds=8", "train.epochs=3",
                                                     'prune.methods=["imp", "random"]'])
        _, ids = launcher.launch(cfg, [RAY_SLOT])
        app = make_app(Path(runs.name), blink=False, poll_s=0.3, follow_s=0.2, gpu_count=0,
                       overrides=["run.seeds=[0]"])
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(3000):  # both nodes busy: two runs with a finished round each
                live = [app.views.get(r) for r in ids]
                if app.loaded and sum(1 for v in live if v and v.status == "running" and v.rows and "@" in v.device) >= 2:
                    break
                await pilot.pause(0.1)
            await pilot.pause(0.8)
            app.save_screenshot(filename="runs-ray.svg", path=str(OUT))
            saved.append("runs-ray.svg")
            app.open_launch()
            for _ in range(600):
                if getattr(app.screen, "form_settled", False):
                    break
                await pilot.pause(0.05)
            devices = app.screen.query_one("#devices")
            devices.deselect_all()
            devices.select(RAY_SLOT)
            for _ in range(1200):
                if "CPUs" in app.screen.cluster_text:
                    break
                await pilot.pause(0.1)
            await pilot.pause(0.8)
            app.save_screenshot(filename="launch-ray.svg", path=str(OUT))
            saved.append("launch-ray.svg")
    finally:
        for rid, entry in launcher.entries().items():
            if entry.state in ("queued", "running"):
                launcher.cancel(entry)
        ray.shutdown()
        time.sleep(5)  # let the driver see the cancels before its cluster goes
        cluster.shutdown()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder for the run store (default: a temporary one)")
    parser.add_argument("--distillers", type=Path, metavar="RUNS",
                        help="only shoot Compare over the mnist-distillers runs in this run store")
    parser.add_argument("--ray", action="store_true", help="only shoot Runs and Launch with a Ray launch")
    args = parser.parse_args()
    if args.ray:
        base = args.store or Path(tempfile.mkdtemp(prefix="dptui-screenshots-ray-"))
        base.mkdir(parents=True, exist_ok=True)
        os.chdir(base)
        OUT.mkdir(exist_ok=True)
        saved = asyncio.run(shoot_ray(base / "runs"))
        print(f"saved {', '.join(saved)} in {OUT}")
        return 0
    if args.distillers:
        store = args.distillers.resolve()
        os.chdir(store.parent)  # the app shows the store by its folder name
        saved = asyncio.run(shoot_distillers(Path(store.name), "mnist-distillers"))
        print(f"saved {', '.join(saved)} in {OUT}")
        return 0
    base = args.store or Path(tempfile.mkdtemp(prefix="dptui-screenshots-"))
    base.mkdir(parents=True, exist_ok=True)
    os.chdir(base)  # the app shows the store as "runs"
    runs = base / "runs"
    if not any(runs.glob("*/results.json")):
        build_store(runs)
    launcher, bad_id, live_id = start_side_runs(runs)
    OUT.mkdir(exist_ok=True)
    try:
        saved = asyncio.run(shoot(runs, bad_id, live_id))
    finally:
        entry = launcher.entries().get(live_id)
        if entry is not None and entry.state in ("queued", "running"):
            launcher.cancel(entry)
    print(f"saved {', '.join(saved)} in {OUT} (store: {runs})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
