"""Weights & Biases sink: a run's metrics as a W&B run (``[run] log``), offline unless ``WANDB_MODE`` says otherwise.

The W&B run starts at the run's first event: ``dir`` is the run's directory (offline data lands in
``<run dir>/wandb/offline-run-*/``; ``wandb sync`` uploads it), ``project`` the experiment's name, ``name`` the
run's label, ``id`` its run id (``resume="allow"``), ``config`` the resolved config (``[run]`` with the run's
method, seed, variant and run id, as in its config.toml). Quiet: no console capture, no system metrics, no git
or machine probing, nothing printed. The same metrics as the TensorBoard sink, each against its own step
metric (``define_metric``), so no ``step=`` is ever passed and the series cannot clash: per round ``sparsity``,
``val_acc``, ... against ``round``; ``loss/<stage>`` against ``epoch/<stage>``; ``dense/test_acc`` at round 0;
the analyses' numeric results at their round. At the end: ``best_val_acc`` and ``final_sparsity`` in the run's
summary, then ``finish()`` (exit code 1 for a failed run). Needs the ``wandb`` package.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import wandb

from ..config import Config, to_dict
from ..events import AnalysisDone, DenseDone, EpochProgress, Event, RoundDone, RunDone, RunFailed
from . import LOSS_STAGES, LogSink, analysis_metrics, epoch_step, final_metrics, number, round_metrics

BAD_PROJECT_CHARS = re.compile(r"[/\\#?%:]+")  # not allowed in a W&B project name


QUIET = dict(silent=True, quiet=True, show_info=False, console="off", disable_git=True, save_code=False,
             disable_job_creation=True, x_save_requirements=False, x_disable_stats=True, x_disable_meta=True,
             x_disable_machine_info=True)  # print nothing; no console capture, system metrics, git or host probing


def quiet_settings() -> wandb.Settings:
    """:data:`QUIET`, less any setting this wandb version does not have (wandb >= 0.19.10: reinit="create_new")."""
    known = getattr(wandb.Settings, "model_fields", None)
    return wandb.Settings(**{k: v for k, v in QUIET.items() if known is None or k in known})


class WandbSink(LogSink):
    name = "wandb"

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, meta: dict):
        super().__init__()
        self.run_dir, self.run_id = Path(run_dir), run_id
        self.project = BAD_PROJECT_CHARS.sub("-", str(meta.get("experiment") or cfg.experiment.name)) or "experiment"
        self.label = str(meta.get("label") or meta.get("method") or run_id)
        extra = {k: meta[k] for k in ("method", "seed", "variant") if k in meta}
        d = to_dict(cfg)
        self.config = {**d, "run": {**d["run"], **extra, "run_id": run_id}}
        self.run: Any = None  # started at the first event
        self.defined: set[str] = set()
        self.rows: list[dict] = []
        self.exit_code = 0

    def start(self):
        if self.run is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(self.run_dir),
                                  project=self.project, name=self.label, id=self.run_id, config=self.config,
                                  resume="allow", reinit="create_new", settings=quiet_settings())
        return self.run

    def log(self, step_key: str, step: int, metrics: dict[str, float]) -> None:
        run = self.start()
        for key in metrics:
            if key not in self.defined:
                run.define_metric(key, step_metric=step_key)
                self.defined.add(key)
        run.log({step_key: step, **metrics})

    def handle(self, event: Event) -> None:
        if isinstance(event, EpochProgress):
            if event.stage in LOSS_STAGES and (loss := number(event.loss)) is not None:
                self.log(f"epoch/{event.stage}", epoch_step(event.round, event.epoch, event.epochs),
                         {f"loss/{event.stage}": loss})
        elif isinstance(event, RoundDone):
            self.log("round", int(event.row["round"]), round_metrics(event.row))
            self.rows.append(event.row)
        elif isinstance(event, DenseDone):
            if (acc := number(event.test_acc)) is not None:
                self.log("round", 0, {"dense/test_acc": acc})
        elif isinstance(event, AnalysisDone):
            metrics = analysis_metrics(event.analysis, event.result)
            if metrics:
                self.log("round", event.round, metrics)
        elif isinstance(event, RunFailed):
            self.exit_code = 1
            self.start().summary.update({"status": "failed", "error": event.error})
        elif isinstance(event, RunDone):
            self.start().summary.update({"status": event.status, "rounds_done": event.rounds_done,
                                         "wall_s": event.wall_s})
        else:
            self.start()  # RunStarted etc.: the W&B run exists from the run's start

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(final_metrics(self.run_dir, self.rows))
        finally:
            self.run.finish(exit_code=self.exit_code)
