"""Logging sinks fed by the engine's typed events: TensorBoard and Weights & Biases (``[run] log``).

A log sink is a callable on :class:`~dpcore.events.Event` plus ``close()``, one per run: the engine adds the
sinks :func:`make_log_sinks` builds for ``cfg.run.log`` to its fan-out and closes them when the run ends
(done, stopped or failed). Their packages are optional and imported lazily; :func:`check_log_sinks` proves they
are installed before any training. A sink never fails a run: an error while logging is reported once as a
warning and that sink goes quiet. Nothing is written (no writer opened, no W&B run started) before the first
event, so a run that is already done leaves no new files.

The close contract: ``close()`` may be called any number of times, after any events (or none); it writes what
is pending (flush, hparams, ``finish()``), never raises, and every event after it is ignored.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..config import LOG_SINKS, Config
from ..errors import ConfigError
from ..events import Event

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # sink name -> the package it needs
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # sink name -> the dptui extra that installs it


def missing_package(name: str) -> ConfigError:
    return ConfigError(f"run.log includes {name!r} but the {PACKAGES[name]} package is not installed; "
                       f"pip install 'dptui[{EXTRAS[name]}]'")


def check_log_sinks(cfg: Config) -> None:
    """Every sink ``cfg.run.log`` names is known and its package is installed (imports nothing)."""
    for name in cfg.run.log:
        if name not in LOG_SINKS:
            raise ConfigError(f"run.log has unknown sink {name!r}; allowed: {', '.join(map(repr, LOG_SINKS))}")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise missing_package(name)


class LogSink:
    """Base class: ``__call__`` hands each event to :meth:`handle` until :meth:`close`; an error in either
    is one warning and silences the sink (logging must not fail, or hide the result of, a run)."""

    name = "log"

    def __init__(self) -> None:
        self.closed = False
        self.broken = False

    def __call__(self, event: Event) -> None:
        if self.closed or self.broken:
            return
        try:
            self.handle(event)
        except Exception as err:  # noqa: BLE001 - a logging failure is reported, the run goes on
            self.fail(err)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.finish()
        except Exception as err:  # noqa: BLE001 - closing must not hide the run's own outcome
            self.fail(err)

    def fail(self, err: BaseException) -> None:
        if self.broken:  # reported already
            return
        self.broken = True
        warnings.warn(f"run.log: the {self.name} sink stopped logging ({type(err).__name__}: {err})",
                      RuntimeWarning, stacklevel=3)

    # -- for subclasses ------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Write what is pending and release the writer (called once, by :meth:`close`)."""


def make_log_sinks(cfg: Config, run_dir: Path, run_id: str, meta: dict) -> list[LogSink]:
    """The sinks ``cfg.run.log`` names, for one run whose directory is ``run_dir``.

    ``meta``: the run's ``experiment``, ``method``, ``seed``, ``variant`` and ``label`` (its display name).
    Raises :class:`ConfigError` (one line) when a sink's package is missing."""
    check_log_sinks(cfg)
    sinks: list[LogSink] = []
    for name in cfg.run.log:
        try:
            if name == "tensorboard":
                from .tensorboard import TensorBoardSink as cls
            else:
                from .wandb import WandbSink as cls
        except ImportError as err:  # installed (check_log_sinks found it) but broken
            raise ConfigError(f"run.log includes {name!r} but the {PACKAGES[name]} package cannot be imported "
                              f"({type(err).__name__}: {err}); reinstall it: pip install 'dptui[{EXTRAS[name]}]'") from None
        sinks.append(cls(cfg, Path(run_dir), run_id, dict(meta)))
    return sinks


def close_log_sinks(sinks: list) -> None:
    """Close every sink (each close never raises)."""
    for s in sinks:
        s.close()


# -- shared helpers ------------------------------------------------------------------------------
def number(x: Any) -> float | None:
    """``x`` as a finite float when it is a real number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


ROUND_METRICS = ("sparsity", "val_acc", "inner_test_acc", "time_to_mask_s", "time_to_mask_validated_s",
                 "inner_train_s")
LOSS_STAGES = ("dense", "inner", "validate")  # the trainings whose per-epoch loss is logged


def round_metrics(row: dict) -> dict[str, float]:
    """A RoundDone row's logged metrics (those that are None, e.g. val_acc of an unvalidated round, left out)."""
    return {k: v for k in ROUND_METRICS if (v := number(row.get(k))) is not None}


def analysis_metrics(analysis: str, result: dict) -> dict[str, float]:
    """An AnalysisDone result's numeric values, tagged ``<analysis>/<key>``; an instability result (one per
    mask and rewind point) as ``instability/rewind_<k>/<key>``."""
    prefix = analysis
    if analysis == "instability" and number(result.get("rewind")) is not None:
        prefix = f"instability/rewind_{int(result['rewind'])}"
    return {f"{prefix}/{k}": x for k, v in result.items() if k != "rewind" and (x := number(v)) is not None}


def final_metrics(run_dir: Path, seen: list[dict]) -> dict[str, float]:
    """Best val_acc and final sparsity over all the run's rounds: from its results.json (which holds the rounds
    finished before a resume too), else from the rows seen in this process."""
    rows = seen
    try:
        rows = json.loads((Path(run_dir) / "results.json").read_text()).get("rounds") or seen
    except (OSError, ValueError, AttributeError):
        pass
    out: dict[str, float] = {}
    vals = [v for r in rows if (v := number(r.get("val_acc"))) is not None]
    if vals:
        out["best_val_acc"] = max(vals)
    if rows and number(rows[-1].get("sparsity")) is not None:
        out["final_sparsity"] = float(rows[-1]["sparsity"])
    return out


def epoch_step(round: int, epoch: int, epochs: int) -> int:
    """The global step of a per-epoch loss: epochs trained in its stage so far, counted over the rounds
    (round r's training continues at (r - 1) * epochs; the dense training is round 0). Derived from the
    event rather than counted, so a resumed run continues each series instead of restarting it (which
    TensorBoard would read as out of order and drop) and a repeated round replaces its own points."""
    return max(round - 1, 0) * epochs + epoch


def flat_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``section.key`` -> scalar (int, float, str, bool); lists as compact JSON text."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, separators=(",", ":"), default=str)
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out
