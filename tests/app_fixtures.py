"""A fake run store for the dashboard tests: results.json + events.jsonl written directly (no training),
with fixed timestamps so that screens and snapshots are deterministic."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any, Callable

from textual.css.query import NoMatches

from dpcore.events import (DenseDone, DistillDone, EpochProgress, Event, RoundDone, RoundStarted, RunDone,
                           RunFailed, RunStarted, StageStarted)

T0 = 1_700_000_000.0
DENSE = {"test_acc": 0.962, "train_s": 10.8}
SYNTHETIC = {"source": "dm ipc10", "images": 100, "ipc": 10, "distill_s": 61.5, "cached": False, "lr": None}

# run ids of demo_store()
IMP0, DIST0, RAND0, DIST1, IMP1, CIFAR = (f"{c}{'0' * 15}" for c in "abcdef")


def round_row(method: str, r: int, seed: int = 0) -> dict:
    inner_s = {"imp": 10.0 + r, "distilled": 3.0 + 0.1 * r, "random": 0.0}[method]
    drop = {"imp": 0.002, "distilled": 0.006, "random": 0.015}[method]
    val_acc = round(0.962 + 0.004 - drop * r * r + 0.001 * seed, 4)
    t2m = sum({"imp": 10.0 + k, "distilled": 3.0 + 0.1 * k, "random": 0.0}[method] + 0.05 for k in range(1, r + 1))
    return {"round": r, "sparsity": 1 - 0.8 ** r, "remaining": int(266200 * 0.8 ** r),
            "inner_train_s": inner_s, "inner_test_acc": None if method == "random" else round(val_acc - 0.01, 4),
            "prune_s": 0.05, "val_acc": val_acc, "val_train_s": 11.0 + r, "time_to_mask_s": t2m,
            "time_to_mask_validated_s": t2m + 11.0 + r, "layer_sparsity": {"features.1.weight": 1 - 0.8 ** r}}


def write_run(root: Path, run_id: str, *, method: str, seed: int = 0, experiment: str = "demo", status: str = "done",
              rounds: int = 3, planned: int = 3, error: str | None = None, progress: tuple | None = None,
              dataset: str = "mnist-embedded", model: str = "lenet-300-100", device: str = "cpu",
              instability: list[dict] | None = None, results: bool = True) -> Path:
    """One run: ``rounds`` finished rounds; ``status`` done/stopped/failed/running; ``progress`` =
    (stage, round, epoch, epochs, eta_s) appends an epoch in flight (for running runs)."""
    d = Path(root) / run_id
    d.mkdir(parents=True, exist_ok=True)
    rows = [round_row(method, r, seed) for r in range(1, rounds + 1)]
    t = T0
    events: list[Event] = []

    def ev(cls, **kw):
        nonlocal t
        t += 1.0
        events.append(cls(run_id=run_id, t=t, **kw))

    ev(RunStarted, experiment=experiment, method=method, seed=seed, dataset=dataset, model=model, device=device,
       rounds=planned, resumed_after=0)
    ev(DenseDone, test_acc=DENSE["test_acc"], train_s=DENSE["train_s"], cached=False)
    if method == "distilled":
        ev(StageStarted, stage="distill", round=0)
        ev(DistillDone, source=SYNTHETIC["source"], images=100, distill_s=SYNTHETIC["distill_s"], cached=False)
    for row in rows:
        ev(RoundStarted, round=row["round"], rounds=planned, target_sparsity=row["sparsity"])
        ev(StageStarted, stage="inner", round=row["round"])
        ev(EpochProgress, stage="inner", round=row["round"], epoch=10, epochs=10, loss=0.1, elapsed_s=2.0, eta_s=0.0)
        ev(StageStarted, stage="validate", round=row["round"])
        ev(RoundDone, row=row)
    if progress:
        stage, r, epoch, epochs, eta = progress
        ev(RoundStarted, round=r, rounds=planned, target_sparsity=1 - 0.8 ** r)
        ev(StageStarted, stage=stage, round=r)
        ev(EpochProgress, stage=stage, round=r, epoch=epoch, epochs=epochs, loss=0.25, elapsed_s=5.0, eta_s=eta)
    if status == "failed":
        ev(RunFailed, error=error or "RuntimeError: boom")
    elif status in ("done", "stopped"):
        ev(RunDone, status=status, rounds_done=len(rows), wall_s=42.0)
    with open(d / "events.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps(e.to_dict(), separators=(",", ":")) + "\n")
    if results:
        res: dict[str, Any] = {
            "schema": 1, "run_id": run_id, "experiment": experiment, "method": method, "seed": seed,
            "dataset": dataset, "model": model, "device": device, "status": status,
            "error": error if status == "failed" else None, "rounds_planned": planned, "fraction": 0.2,
            "dense": dict(DENSE), "synthetic": dict(SYNTHETIC) if method == "distilled" else None, "rounds": rows,
            "started_at": T0, "updated_at": T0 + 100}
        if instability is not None:
            res["instability"] = instability
        (d / "results.json").write_text(json.dumps(res, indent=1))
    return d


def write_config(run_dir: Path, cfg, method: str, seed: int, device: str = "cpu") -> None:
    """``run_dir``'s config.toml as the engine writes it (the resolved config, ``[run]`` with the run's own
    method, seed, device and id): the estimate's store source reads it to find past runs like a planned one."""
    import tomli_w

    from dpcore.config import to_dict

    tree = to_dict(cfg)
    tree["run"] = {**tree["run"], "method": method, "seed": seed, "device": device, "run_id": Path(run_dir).name}
    (Path(run_dir) / "config.toml").write_text(tomli_w.dumps(tree))


def write_past_runs(root: Path, cfg, seed: int = 1) -> list[str]:
    """One finished run per method of ``cfg`` (3 rounds of :func:`round_row` times) with its config.toml, at
    ``seed``: the store then estimates ``cfg``'s other runs from them. Returns their run ids."""
    ids = []
    for i, method in enumerate(cfg.prune.methods):
        run_id = f"{i + 1:x}{'e' * 15}"
        write_config(write_run(root, run_id, method=method, seed=seed, experiment=cfg.experiment.name), cfg,
                     method, seed)
        ids.append(run_id)
    if "distilled" in cfg.prune.methods:
        write_past_set(root, cfg)
    return ids


def write_past_set(root: Path, cfg, distill_s: float = 20.0) -> None:
    """A synthetic set of ``cfg``'s source distilled earlier at another seed (its meta.json alone): the estimate
    then times the set ``cfg`` still needs from it, not from a calibration (whose time differs run to run)."""
    from dpcore.experiment import Experiment
    from dpcore.synthetic.cache import canonical_model, resolve_for
    from dpcore.synthetic import get_distiller

    sc, ds = cfg.synthetic, Experiment(cfg, root, device="cpu").check().dataset
    iterations = resolve_for(get_distiller(sc.method), ds.name, sc.ipc, dict(sc.params))["iterations"]
    meta = {"method": sc.method, "dataset": ds.name, "ipc": sc.ipc, "device": "cpu", "seed": sc.seed + 100,
            "model": canonical_model({"name": cfg.model.name, **cfg.model.options}), "distill_s": distill_s,
            "iterations_done": iterations}
    folder = Path(root) / "cache" / "synthetic" / "past0000000000000"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps(meta))


def instability_curves(rounds: int = 3) -> list[dict]:
    alphas = [i / 10 for i in range(11)]
    out = []
    for r in range(1, rounds + 1):
        dip = 0.02 * r
        accs = [round(0.96 - dip * (1 - (2 * a - 1) ** 2), 4) for a in alphas]
        out.append({"round": r, "sparsity": 1 - 0.8 ** r, "rewind": {"k": 0, "unit": "epoch", "step": 0},
                    "alphas": alphas, "test_acc": accs, "instability": dip, "barrier": dip,
                    "end_acc": [accs[0], accs[-1]], "bn_recompute": False})
    return out


def demo_store(root: Path) -> Path:
    """demo: imp/distilled/random seed 0 done (3 rounds; distilled has curves), distilled seed 1 running
    (round 3 in flight), imp seed 1 failed; cifar: imp seed 0 stopped after 1 of 4 rounds."""
    root = Path(root)
    write_run(root, IMP0, method="imp")
    write_run(root, DIST0, method="distilled", instability=instability_curves())
    write_run(root, RAND0, method="random")
    write_run(root, DIST1, method="distilled", seed=1, status="running", rounds=2,
              progress=("inner", 3, 150, 300, 12.5))
    write_run(root, IMP1, method="imp", seed=1, status="failed", rounds=1,
              error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    write_run(root, CIFAR, method="imp", experiment="cifar", status="stopped", rounds=1, planned=4,
              dataset="cifar10", model="convnet")
    return root


def run_async(fn):
    """Run an ``async def`` test with asyncio (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


WAIT_S = 30.0  # the upper bound of every wait: generous, for a loaded 2-core machine; never a sleep


def holds(predicate: Callable[[], Any]) -> bool:
    """``predicate()``, with "not yet" for widgets missing while a screen is (re)built."""
    try:
        return bool(predicate())
    except NoMatches:
        return False


async def wait_for(pilot, predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> None:
    """Let the app run until ``predicate()`` holds (polled: the app's workers are real threads); a predicate
    that queries widgets may find none while a screen rebuilds, which counts as not yet."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not holds(predicate):
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        if pilot.app.is_running:
            await pilot.pause(0.02)  # the poll interval; the state decides
        else:
            await asyncio.sleep(0.02)  # an app that quits has no screen to wait on
    if pilot.app.is_running:
        await pilot.pause()


def on_screen(app, name: str) -> bool:
    """``app`` shows a screen of class ``name`` whose widgets are all mounted (a dashboard screen's ``ready``,
    a dialog's mount)."""
    screen = app.screen
    return type(screen).__name__ == name and bool(getattr(screen, "ready", screen.is_mounted))


def settled(app, name: str) -> bool:
    """``app`` shows a ready ``name`` screen that has drawn the store as the app knows it now."""
    return app.loaded and on_screen(app, name) and app.screen.up_to_date


def screen_text(app) -> str:
    """Everything the current screen shows, as plain text."""
    from rich.console import Console
    import io

    console = Console(file=io.StringIO(), width=app.size.width, height=app.size.height, record=True,
                      force_terminal=False, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


class FakeLauncher:
    """Records what the app asks for; ``fake_entries`` are the launch records it reports."""

    def __init__(self, runs_dir: Path, gpu_count: int = 0):
        from dptui.launches.launcher import Launcher

        self.real = Launcher(runs_dir, gpu_count=gpu_count)
        self.calls: list[tuple] = []
        self.estimates: list[dict | None] = []  # the estimates handed to each launch
        self.fake_entries: dict[str, Any] = {}

    def device_slots(self) -> list[str]:
        return self.real.device_slots()

    def plan(self, cfg, slots):
        return self.real.plan(cfg, slots)

    def capacity(self, cfg, slots):
        return self.real.capacity(cfg, slots)

    def launch(self, cfg, slots, only=None, estimates=None):
        self.calls.append(("launch", cfg, list(slots), only))
        self.estimates.append(estimates)
        return Path("/fake/launches/x"), list(only or [])

    def cancel(self, entry) -> str:
        self.calls.append(("cancel", entry.run_id))
        return "cancel requested"

    def resume(self, run_id, entry):
        self.calls.append(("resume", run_id))
        return Path("/fake/launches/y"), [run_id]

    def entries(self) -> dict:
        return dict(self.fake_entries)


FIXED_LOAD = "cpu 12% of 2 · mem 3.1/23.4 GiB"


def make_test_app(runs: Path, **kw):
    """The real app on a fake store: fast polling, no cursor blink, a recording launcher."""
    from dptui.app import make_app

    kw.setdefault("launcher", FakeLauncher(Path(runs), gpu_count=kw.pop("gpu_count", 0)))
    kw.setdefault("blink", False)
    kw.setdefault("load_probe", lambda: FIXED_LOAD)  # the header's load line, fixed: snapshots stay the same
    kw.setdefault("poll_s", 0.05)
    kw.setdefault("follow_s", 0.05)
    return make_app(runs, **kw)


def launch_entry(run_id: str, runs: Path, state: str = "running", **kw):
    """A launch record as the launcher reports it (default: running, its process alive)."""
    from dptui.launches.launcher import LaunchEntry

    fields = dict(pid=4242, slot="cpu", runner_alive=True, pid_alive=state == "running")
    fields.update(kw)
    return LaunchEntry(run_id, Path(runs) / "launches" / "demo-1", {}, state, T0, ["cpu"], **fields)
