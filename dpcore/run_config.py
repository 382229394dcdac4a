"""A run's config rebuilt from its directory: the one way to resume or analyse an existing run.

Every run writes its resolved config to ``<runs>/<run id>/config.toml`` with ``[run]`` extended by the
run's ``method``, ``seed``, ``device``, ``run_id`` and, for one of several synthetic sources, ``variant``
(its ``[synthetic]`` section then holds that source's settings). :func:`load_run_config` turns that back
into a :class:`~dpcore.config.Config` that plans exactly this run (``run.seeds = [seed]``,
``prune.methods = [method]``, the variant's label kept) and proves it by planning it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING


from .config import Config, config_from_dict
from .errors import ConfigError, DPError

if TYPE_CHECKING:
    from .engine import RunPlan

REQUIRED = ("method", "seed", "run_id")


@dataclass(frozen=True)
class RunSpec:
    """One existing run: a config that plans exactly it, and its plan."""

    cfg: Config  # seeds = [seed], methods = [method], device = the device type, the variant's label kept
    plan: RunPlan  # its plan (plan.run_id == run_id)
    method: str
    seed: int
    run_id: str
    variant: str  # "" unless the run is one of several synthetic sources
    device: str  # the device type it ran on: "cpu" or "cuda"
    run_dir: Path


def load_run_config(run_dir: str | Path) -> RunSpec:
    """The config of the run in ``run_dir`` (``<runs>/<run id>``), from its ``config.toml``.

    Raises :class:`DPError` (one line: what, where, how to fix) when the directory has no config.toml, the
    file lacks ``run.method``/``run.seed``/``run.run_id``, or the rebuilt config plans another run."""
    from .experiment import Experiment
    from .profiles import read_toml

    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    if not path.is_file():
        raise DPError(f"{run_dir}: not a run directory (no config.toml), so its config cannot be rebuilt; "
                      "pick a run listed by `dptui runs`, or launch its profile again")
    raw = read_toml(path)
    run = dict(raw.get("run", {}))
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        raise DPError(f"{path}: has no run.{missing[0]}, so it was not written by a run; "
                      "pick a run listed by `dptui runs`, or launch its profile again")
    method, seed, run_id = str(run.pop("method")), run.pop("seed"), str(run.pop("run_id"))
    variant = str(run.pop("variant", "") or "")
    device = "cuda" if str(run.pop("device", "cpu")).startswith("cuda") else "cpu"
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DPError(f"{path}: run.seed = {seed!r} is not a whole number; launch the run's profile again")
    run.update(seeds=[seed], device=device)
    raw = {**raw, "run": run, "prune": {**raw.get("prune", {}), "methods": [method]}}
    if variant:  # one of several synthetic sources: [synthetic] holds its settings; keep its label
        syn = dict(raw.get("synthetic", {}))
        raw["synthetic"] = {**syn, "variants": [{"name": variant, "params": syn.get("params", {}),
                                                 "path": syn.get("path", "")}]}
    try:
        cfg = config_from_dict(raw, where=str(path))
    except ConfigError as err:
        raise ConfigError(f"{err} (an older or newer run?); launch the run's profile again") from None
    plans = Experiment(replace(cfg, run=replace(cfg.run, executor="local")), run_dir.parent, device=device).plans
    if [p.run_id for p in plans] != [run_id]:
        got = ", ".join(p.run_id for p in plans) or "nothing"
        raise DPError(f"{path}: no longer plans run {run_id} (it plans {got}; made by another engine "
                      "version?); launch the run's profile again")
    return RunSpec(cfg, plans[0], method, seed, run_id, variant, device, run_dir)
