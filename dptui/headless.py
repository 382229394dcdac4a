"""``dptui --headless``: run an experiment as a batch job with a live Rich display, then print tables."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpcore.config import Config
from dpcore.events import (CompileFallback, DenseDone, DistillDone, EpochProgress, Event, RoundDone, RoundStarted,
                           RunDone, RunFailed, RunStarted, StageStarted, Waiting)
from dpcore.experiment import Experiment
from dpcore.summary import headline_lines

from .export import to_rich, write_exports
from .interrupt import catch_ctrl_c


class LiveDisplay:
    """Renders engine events: a runs bar, each running run's round/sparsity and an epoch bar with ETA (one bar,
    or one per run when several run at once)."""

    def __init__(self, console: Console, total_runs: int, parallel: bool = False):
        self.console, self.parallel = console, parallel  # parallel: runs interleave, so lines name their run
        self.labels: dict[str, str] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.runs_task = self.progress.add_task("runs", total=total_runs)
        self.epoch_task = self.progress.add_task("", total=1, visible=False)
        self.bars: dict[str, int] = {}  # run id -> its epoch bar, when runs interleave
        self.label = ""
        self.rounds: dict[str, str] = {}  # run id -> "round r/R → s%"

    def bar(self, run_id: str):
        if not self.parallel:
            return self.epoch_task
        if run_id not in self.bars:
            self.bars[run_id] = self.progress.add_task("", total=1, visible=False)
        return self.bars[run_id]

    def run_ended(self, run_id: str) -> None:
        self.progress.advance(self.runs_task)
        if run_id in self.bars:
            self.progress.remove_task(self.bars.pop(run_id))

    def __call__(self, ev: Event) -> None:
        p, log = self.progress, self.console.print
        if isinstance(ev, Waiting):
            label = self.labels.get(ev.run_id, ev.run_id)
            log(f"[yellow]waiting[/] for {ev.what} ({label}): another process has it"
                + (f", {ev.holder}" if ev.holder else "") + "; its result is read when it finishes")
            return
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
            self.rounds[ev.run_id] = f"round {ev.round}/{ev.rounds} → {100 * ev.target_sparsity:.1f}%"
        elif isinstance(ev, StageStarted):
            where = "" if ev.stage in ("dense", "distill") else f" {self.rounds.get(ev.run_id, '')}"
            bar = self.bar(ev.run_id)
            p.update(bar, description=f"{self.label}{where} · {ev.stage}", completed=0, total=1,
                     visible=ev.stage != "prune")
            p.reset(bar)
        elif isinstance(ev, EpochProgress):
            p.update(self.bar(ev.run_id), completed=ev.epoch, total=ev.epochs)
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
        elif isinstance(ev, CompileFallback) and ev.path == "cuda_graphs":
            log(f"  [yellow]warning:[/] round {ev.round}: {escape(ev.error)}; the rows say cuda_graphs = false and "
                "their times are eager ones")
        elif isinstance(ev, CompileFallback):
            log(f"  [yellow]warning:[/] torch.compile failed in round {ev.round} ({escape(ev.error)}); the steps "
                "ran eagerly, so the rows say compiled = false and their times are eager ones")
        elif isinstance(ev, RunDone):
            self.run_ended(ev.run_id)
            if ev.status != "done":
                log(f"  [yellow]{ev.status}[/] after {ev.rounds_done} rounds")
        elif isinstance(ev, RunFailed):
            self.run_ended(ev.run_id)
            log(f"  [red]failed:[/] {ev.error}")


def run_headless(cfg: Config, runs_dir: Path, data_root: str | None, out_dir: Path | None,
                 console: Console, only: list[str] | None = None, dry_run: bool = False) -> int:
    """Returns the exit code: 0 all runs done, 1 a run failed, 130 stopped by Ctrl-C.

    The whole experiment is checked first (:meth:`Experiment.check`): bad input raises :class:`DPError`
    (exit 2) before any training and before the store is touched."""
    exp = Experiment(cfg, runs_dir, data_root, only=only)
    exp.check()
    cap = exp.capacity()
    if cfg.run.executor != "ray" and (len(exp.plans) > 1 or dry_run):
        console.print(f"[dim]{len(exp.plans)} runs, {cap.line()}[/]")
    if dry_run:  # what it would cost, nothing run (the calibration trains a few steps in this process)
        from dpcore.estimate import estimate, estimate_table

        console.print(to_rich(estimate_table(estimate(exp))))
        return 0
    parallel = exp.cfg.run.executor == "ray" or cap.jobs > 1
    stop, restore_sigint = catch_ctrl_c(console)
    display = LiveDisplay(console, len(exp.plans), parallel=parallel)
    for plan in exp.plans:
        display.labels[plan.run_id] = f"{plan.label} seed {plan.seed}"
    cancel_dir = os.environ.get("DPTUI_CANCEL_DIR")  # set by the dashboard's queue runner for a Ray launch
    cancelled = (lambda run_id: (Path(cancel_dir) / run_id).exists()) if cancel_dir else None
    try:
        with display.progress:
            results = exp.run(sink=display, should_stop=stop.is_set, cancelled=cancelled)
    finally:
        restore_sigint()
    tables = exp.tables(results)
    for table in tables:
        console.print(to_rich(table))
    for table in tables:
        if table.title == "Headline":
            for line in headline_lines(table):
                console.print(f"[bold]headline[/] {escape(line)}")
    out = out_dir or Path(runs_dir) / "experiments" / f"{exp.name}-{exp.id}"
    written = write_exports(tables, out, f"{exp.name}: {', '.join(cfg.prune.methods)}")
    console.print(f"exports: {out}/ ({', '.join(p.name for p in written)})")
    if stop.is_set():
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0
