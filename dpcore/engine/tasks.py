"""What an executor runs, wherever it runs it: one run (:func:`execute_run`), and the shared stages that runs
wait for (:func:`shared_stages`, :func:`make_stage`): the dense baseline of a seed and the synthetic set of a
source, made once per cache key before the runs that need them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..data.dataset import Dataset
from ..events import Sink
from ..synthetic.provider import cache_entry, synthetic_cache_dir
from ..validate import Checked
from .plan import RunPlan
from .run import Run, StopFlag
from .sources import SyntheticSources


@dataclass(frozen=True)
class SharedStage:
    """A cache entry a run needs before it starts: ``kind`` dense or synthetic, ``rel`` its path in the store."""

    kind: str
    rel: str  # relative to the run store: the file (dense) or folder (synthetic)
    plan: RunPlan  # a run that needs it (any: the stage is the same for all of them)
    ready: bool  # already in the store
    method: str = ""  # the distiller (MTT stages share expert trajectories, so they go one after another)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.rel}"


def finished_results(cfg: Config, plan: RunPlan, dataset: Dataset, runs_dir: Path) -> dict | None:
    """The run's results when it is done in ``runs_dir`` (nothing left to run), else None."""
    return Run(cfg, plan, dataset, runs_dir).finished()


def shared_stages(cfg: Config, plan: RunPlan, dataset: Dataset, runs_dir: Path) -> list[SharedStage]:
    """The cache entries ``plan`` needs in ``runs_dir`` before it starts (made or not)."""
    run = Run(cfg, plan, dataset, runs_dir)
    dense = run.dense_cache_path()
    out = [SharedStage("dense", dense.relative_to(runs_dir).as_posix(), plan, dense.exists())]
    if plan.method == "distilled":
        entry = cache_entry(run.cfg.synthetic, dataset, cfg.model)
        if entry is not None:
            folder = synthetic_cache_dir(runs_dir) / entry
            out.append(SharedStage("synthetic", folder.relative_to(runs_dir).as_posix(), plan,
                                   (folder / "images_best.pt").exists(), run.cfg.synthetic.method))
    return out


def make_stage(cfg: Config, stage: SharedStage, checked: Checked, store: Path, data_root: str | Path | None,
               sink: Sink | None = None, should_stop: StopFlag | None = None) -> None:
    """Make ``stage`` in ``store`` (under its claim: another process making it is waited for, not repeated)."""
    run = Run(cfg, stage.plan, checked.dataset, store, sink=sink, should_stop=should_stop)
    run.emit = sink or (lambda ev: None)  # a stage's events are shown, not written into a run's events file
    if stage.kind == "dense":
        run.results = run.new_results([])
        run.start_point()
    else:
        sources = SyntheticSources(run.cfg, store, data_root, checked.dataset, checked.files)
        sources.get(run.cfg.synthetic, should_stop=should_stop, on_wait=run.waiting(f"synthetic set of {stage.rel}"))


def execute_run(cfg: Config, plan: RunPlan, checked: Checked, runs_dir: Path, *, data_root: str | Path | None,
                sources: SyntheticSources | None = None, sink: Sink | None = None,
                should_stop: StopFlag | None = None, node: str = "") -> dict:
    """Run (or resume) one planned run in ``runs_dir``; returns its results. The caller holds the run's claim."""
    sources = sources or SyntheticSources(cfg, runs_dir, data_root, checked.dataset, checked.files)
    run = Run(cfg, plan, checked.dataset, runs_dir, sources=sources, sink=sink, should_stop=should_stop, node=node)
    return run.execute()


def analyze_run(cfg: Config, plan: RunPlan, checked: Checked, runs_dir: Path, spec, *, sink: Sink | None = None,
                should_stop: StopFlag | None = None) -> dict:
    """The analyses of ``spec`` on a run whose rounds are on disk; returns its updated results."""
    run = Run(cfg, plan, checked.dataset, runs_dir, sink=sink, should_stop=should_stop)
    return run.run_analyses(spec)
