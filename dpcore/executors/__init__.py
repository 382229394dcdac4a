"""Where an experiment's runs execute: ``local`` (this process, one run after another) or ``ray`` (one Ray
task per run on a cluster, results streamed back into this machine's run store). Both run the same engine."""

from __future__ import annotations

from pathlib import Path

from dpcore.config import Config
from dpcore.events import Sink
from dpcore.validate import Checked

EXECUTORS = ("local", "ray")


def run_experiment_on(cfg: Config, runs_dir: str | Path, *, data_root: str | Path | None = None,
                      sink: Sink | None = None, should_stop=None, only: list[str] | None = None,
                      checked: Checked | None = None, cancelled=None) -> list[dict]:
    """Run (or resume) ``cfg``'s runs with ``cfg.run.executor``; returns each run's results dict.

    ``cancelled(run_id) -> bool``: a per-run stop request (the dashboard's cancel of a Ray launch; a local
    launch runs each run in its own process, which the queue runner signals)."""
    if cfg.run.executor == "ray":
        from .ray_cluster import run_on_ray

        return run_on_ray(cfg, Path(runs_dir), data_root=data_root, sink=sink, should_stop=should_stop, only=only,
                          checked=checked, cancelled=cancelled)
    from dpcore.engine import run_experiment

    return run_experiment(cfg, runs_dir, data_root=data_root, sink=sink, should_stop=should_stop, only=only,
                          checked=checked)
