"""The front door: one experiment, from a profile to its tables.

::

    from dpcore.experiment import Experiment

    exp = Experiment.from_profile("quickstart", ["run.seeds=[0]"], runs_dir="runs")
    for plan in exp.plans:                      # one run per seed x method (x synthetic source)
        print(plan.label, plan.seed, plan.run_id)
    exp.check()                                 # the whole experiment, before any training (DPError if bad)
    results = exp.run(sink=print)               # on run.executor, run.jobs at once; resumes what is done
    for table in exp.tables(results):           # the row model behind every table and export
        print(table.title, len(table.rows))

Every way in (``dptui --headless``, ``dptui analyze``, the dashboard's launches, the Ray driver) goes through
:class:`Experiment`: it plans the runs, checks them, splits the machine (``run.jobs``, ``run.threads``), runs
them on an executor with a sink and a stop flag, and reports. Runs are claimed in the store before they run
(:mod:`dpcore.claims`), so two processes on one store never do the same work.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import Config, config_from_dict, to_dict
from .engine import RunPlan, analyze_run, finished_results, plan_runs
from .errors import DPError
from .events import Sink
from .parallel import Capacity, capacity, threads_from_env
from .results import RunResults, as_results
from .store import config_hash, default_runs_dir
from .validate import Checked, check_experiment, resolve_device

StopFlag = Callable[[], bool]


def on_cluster(cfg: Config) -> Config:
    """``cfg`` with the device its runs get on a Ray cluster (``cuda`` when ``run.gpus_per_run`` > 0)."""
    return replace(cfg, run=replace(cfg.run, device="cuda" if cfg.run.gpus_per_run > 0 else "cpu"))


class Experiment:
    """An experiment's runs in one run store.

    ``only``: run ids to keep (the others are left out; an id that is not a run of it is refused).
    ``device``: the device type to plan for, instead of resolving ``run.device`` here (a launch for another
    machine, or an existing run's own)."""

    def __init__(self, cfg: Config, runs_dir: str | Path | None = None, data_root: str | Path | None = None, *,
                 only: Sequence[str] | None = None, device: str | None = None):
        if cfg.run.executor == "ray":
            cfg = on_cluster(cfg)
            device = cfg.run.device
        self.cfg = cfg
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.data_root = data_root
        self.device = torch.device(device) if device else resolve_device(cfg.run.device)
        plans = plan_runs(cfg, self.device)
        if only:
            unknown = sorted(set(only) - {p.run_id for p in plans})
            if unknown:
                raise DPError(f"--run-id {unknown[0]} is not a run of this experiment; its runs are: "
                              + ", ".join(p.run_id for p in plans))
            plans = [p for p in plans if p.run_id in only]
        self.plans: list[RunPlan] = plans
        self._checked: Checked | None = None

    # -- building one --------------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: str = "quickstart", overrides: Sequence[str] = (), **kw) -> "Experiment":
        """The profile (a name from ``profiles/`` or a path) with ``SECTION.KEY=VALUE`` overrides."""
        from .profiles import load_profile

        cfg, _ = load_profile(profile, list(overrides))
        return cls(cfg, **kw)

    @classmethod
    def of_run(cls, run_dir: str | Path, *, analysis: dict | None = None, device: str | None = None,
               data_root: str | Path | None = None) -> "Experiment":
        """The one run in ``run_dir`` (``<runs>/<run id>``), rebuilt from its config.toml; ``analysis`` replaces
        settings of its ``[analysis]`` and ``device`` its device (other analyses: the same run, same folder)."""
        from .run_config import load_run_config

        spec = load_run_config(run_dir)
        raw = to_dict(spec.cfg)
        raw["run"] = {**raw["run"], "executor": "local"}  # analysed here, whichever executor ran it
        if device:
            raw["run"] = {**raw["run"], "device": device}
        cfg = config_from_dict({**raw, "analysis": {**raw["analysis"], **(analysis or {})}}, where=str(run_dir))
        exp = cls(cfg, Path(run_dir).parent, data_root, device=device or spec.device)
        exp.plans = [replace(exp.plans[0], run_id=spec.run_id)]  # its folder, whatever the new analyses
        return exp

    # -- what it is ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.cfg.experiment.name

    @property
    def id(self) -> str:
        """The experiment's id: a hash of its runs' ids (the same runs, the same id)."""
        return config_hash(sorted(p.run_id for p in self.plans))[:8]

    def capacity(self) -> Capacity:
        """How many of its runs go at once on this machine, with how many CPU threads each."""
        gpus = torch.cuda.device_count() if self.device.type == "cuda" and self.device.index is None else 1
        threads = self.cfg.run.threads or threads_from_env()
        return capacity(self.device.type, self.cfg.run.jobs, threads, gpus=gpus, runs=len(self.plans))

    def use_threads(self) -> None:
        """Give this process the torch threads one of the experiment's runs gets (a CPU's share, or
        ``run.threads``), for work done here rather than in a worker."""
        from .parallel import set_threads

        set_threads(self.capacity().threads if self.device.type == "cpu" else self.cfg.run.threads)

    # -- doing it ------------------------------------------------------------------------------
    def check(self) -> Checked:
        """Check the whole experiment (device, store, data, model, every synthetic source) before any work;
        raises :class:`~dpcore.errors.DPError` with one line on bad input. A Ray experiment is checked on the CPU
        here: its runs get the cluster's devices."""
        if self._checked is None:
            cpu = torch.device("cpu")
            if self.cfg.run.executor != "ray":
                resolve_device(str(self.device))  # a device given to plan for must exist here to run on
            self._checked = check_experiment(self.cfg, self.runs_dir, self.data_root,
                                             device=cpu if self.cfg.run.executor == "ray" else self.device)
        return self._checked

    def run(self, sink: Sink | None = None, should_stop: StopFlag | None = None,
            cancelled: Callable[[str], bool] | None = None) -> list[RunResults]:
        """Run (or resume) every planned run; returns their results in plan order.

        ``sink`` gets every event; ``should_stop()`` stops after the current step (finished rounds are kept);
        ``cancelled(run_id)`` stops one run (a Ray launch cancelled from the dashboard)."""
        checked = self.check()
        should_stop = should_stop or (lambda: False)
        if self.cfg.run.executor == "ray":
            from .executors.ray import run_on_ray

            done = run_on_ray(self, checked, sink=sink, should_stop=should_stop, cancelled=cancelled)
        else:
            from .executors.local import run_local

            done = run_local(self, checked, self.capacity(), sink=sink, should_stop=should_stop)
        return [as_results(r) for r in done]

    def analyze(self, sink: Sink | None = None, should_stop: StopFlag | None = None) -> RunResults:
        """The ``[analysis]`` of a one-run experiment (:meth:`of_run`) on its finished rounds; returns its results."""
        (plan,) = self.plans
        self.use_threads()
        return as_results(analyze_run(self.cfg, plan, self.check(), self.runs_dir, self.cfg.analysis, sink=sink,
                                      should_stop=should_stop))

    # -- reading it ----------------------------------------------------------------------------
    def results(self) -> list[RunResults]:
        """The finished runs' results, read from the store (no work done)."""
        out = []
        for plan in self.plans:
            res = finished_results(self.cfg, plan, self.check().dataset, self.runs_dir)
            if res is not None:
                out.append(as_results(res))
        return out

    def tables(self, results: list[RunResults] | None = None) -> list:
        """The experiment's tables (:mod:`dpcore.summary`'s row model) from ``results`` (default: the store's)."""
        from .summary import experiment_tables

        return experiment_tables(self.results() if results is None else results)


def run_experiment(cfg: Config, runs_dir: str | Path, *, data_root: str | Path | None = None, sink: Sink | None = None,
                   should_stop: StopFlag | None = None, only: Sequence[str] | None = None) -> list[RunResults]:
    """``Experiment(cfg, runs_dir, data_root, only=only).run(sink, should_stop)`` in one call."""
    return Experiment(cfg, runs_dir, data_root, only=only).run(sink=sink, should_stop=should_stop)
