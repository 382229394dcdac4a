"""``dptui --headless``: run an experiment as a batch job with a live Rich display, then print tables."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpcore.config import Config
from dpcore.errors import DPError
from dpcore.engine import apply_threads, plan_runs
from dpcore.executors import run_experiment_on
from dpcore.validate import check_experiment, resolve_device
from dpcore.events import (DenseDone, DistillDone, EpochProgress, Event, RoundDone, RoundStarted, RunDone,
                           RunFailed, RunStarted, StageStarted)
from dpcore.store import config_hash
from dpcore.summary import experiment_tables

from .export import to_rich, write_exports
from .interrupt import catch_ctrl_c


class LiveDisplay:
    """Renders engine events: a runs bar, the current run's round/sparsity line, an epoch bar with ETA."""

    def __init__(self, console: Console, total_runs: int, parallel: bool = False):
        self.console, self.parallel = console, parallel  # parallel: runs interleave, so lines name their run
        self.labels: dict[str, str] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.runs_task = self.progress.add_task("runs", total=total_runs)
        self.epoch_task = self.progress.add_task("", total=1, visible=False)
        self.label = ""
        self.round = ""

    def __call__(self, ev: Event) -> None:
        p, log = self.progress, self.console.print
        if self.parallel:
            label = self.labels.get(ev.run_id, ev.run_id[:8])
            tag = escape(f"[{label}]")
            log = lambda text: self.console.print(text if text.startswith("[bold]") else f"[dim]{tag}[/]{text}")  # noqa: E731
            self.label = label
        if isinstance(ev, RunStarted):
            self.label = self.labels[ev.run_id] = f"{ev.method}{' ' + ev.variant if ev.variant else ''} seed {ev.seed}"
            resumed = f", resuming after round {ev.resumed_after}" if ev.resumed_after else ""
            where = f"{ev.device} @ {ev.node}" if ev.node else ev.device
            log(f"[bold]{self.label}[/] {ev.dataset} / {ev.model} on {where} ({ev.rounds} rounds{resumed}) "
                f"[dim]{ev.run_id}[/]")
        elif isinstance(ev, RoundStarted):
            self.round = f"round {ev.round}/{ev.rounds} → {100 * ev.target_sparsity:.1f}%"
        elif isinstance(ev, StageStarted):
            where = "" if ev.stage in ("dense", "distill") else f" {self.round}"
            p.update(self.epoch_task, description=f"{self.label}{where} · {ev.stage}", completed=0, total=1,
                     visible=ev.stage != "prune")
            p.reset(self.epoch_task)
        elif isinstance(ev, EpochProgress):
            p.update(self.epoch_task, completed=ev.epoch, total=ev.epochs)
        elif isinstance(ev, DenseDone):
            log(f"  dense: test acc {100 * ev.test_acc:.2f}%, train {ev.train_s:.1f}s" + (" (cached)" if ev.cached else ""))
        elif isinstance(ev, DistillDone):
            if ev.distill_s is None:  # a file made elsewhere
                t = "n/a (made elsewhere)"
            else:
                t = f"{ev.distill_s:.1f}s" + (" (cached)" if ev.cached else "")
            log(f"  synthetic set: {ev.source}, {ev.images} images, time-to-distill {t}")
        elif isinstance(ev, RoundDone):
            r = ev.row
            val = f"val {100 * r['val_acc']:.2f}%" if r["val_acc"] is not None else "not validated"
            log(f"  round {r['round']:>2}: sparsity {100 * r['sparsity']:.1f}%, inner {r['inner_train_s']:.1f}s, "
                f"{val}, time-to-mask {r['time_to_mask_s']:.1f}s")
        elif isinstance(ev, RunDone):
            p.advance(self.runs_task)
            if ev.status != "done":
                log(f"  [yellow]{ev.status}[/] after {ev.rounds_done} rounds")
        elif isinstance(ev, RunFailed):
            p.advance(self.runs_task)
            log(f"  [red]failed:[/] {ev.error}")


def run_headless(cfg: Config, runs_dir: Path, data_root: str | None, out_dir: Path | None,
                 console: Console, only: list[str] | None = None) -> int:
    """Returns the exit code: 0 all runs done, 1 a run failed, 130 stopped by Ctrl-C.

    The whole experiment is checked first (:func:`dpcore.validate.check_experiment`): bad input raises
    :class:`DPError` (exit 2) before any training and before the store is touched."""
    on_ray = cfg.run.executor == "ray"
    if on_ray:  # runs get the cluster's device; the experiment is checked here on the CPU
        from dpcore.executors.ray_cluster import on_cluster

        cfg = on_cluster(cfg)
        device = torch.device(cfg.run.device)
    else:
        device = resolve_device(cfg.run.device)
    plans = plan_runs(cfg, device)
    if only:
        unknown = sorted(set(only) - {p.run_id for p in plans})
        if unknown:
            raise DPError(f"--run-id {unknown[0]} is not a run of this experiment; its runs are: "
                          + ", ".join(p.run_id for p in plans))
        plans = [p for p in plans if p.run_id in only]
    apply_threads(cfg)
    checked = check_experiment(cfg, runs_dir, data_root, device=torch.device("cpu") if on_ray else device)
    stop, restore_sigint = catch_ctrl_c(console)
    display = LiveDisplay(console, len(plans), parallel=on_ray)
    cancel_dir = os.environ.get("DPTUI_CANCEL_DIR")  # set by the dashboard's queue runner for a Ray launch
    cancelled = (lambda run_id: (Path(cancel_dir) / run_id).exists()) if cancel_dir else None
    try:
        with display.progress:
            results = run_experiment_on(cfg, runs_dir, data_root=data_root, sink=display, should_stop=stop.is_set,
                                        only=[p.run_id for p in plans], checked=checked, cancelled=cancelled)
    finally:
        restore_sigint()
    tables = experiment_tables(results)
    for table in tables:
        console.print(to_rich(table))
    exp_id = config_hash(sorted(p.run_id for p in plans))[:8]
    out = out_dir or Path(runs_dir) / "experiments" / f"{cfg.experiment.name}-{exp_id}"
    written = write_exports(tables, out, f"{cfg.experiment.name}: {', '.join(cfg.prune.methods)}")
    console.print(f"exports: {out}/ ({', '.join(p.name for p in written)})")
    if stop.is_set():
        return 130
    return 1 if any(r.get("status") == "failed" for r in results) else 0
