"""What the dashboard shows about a run, computed from the store (plain Python, no Textual).

A run is seen through three sources, merged by :func:`build_view`:

- ``results.json`` (the engine's materialised view: rounds, dense, status, error), as :class:`RunResults`,
- ``events.jsonl`` folded into a :class:`RunLive` (stage, epoch progress, log lines; newest information),
- the launch record of the app's launcher (:class:`dptui.app.launcher.LaunchEntry`: queued, process alive,
  exit code), which tells a live process from a dead one.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from dpcore.estimate import mean_round_s, pack
from dpcore.events import (AnalysisDone, DenseDone, DistillDone, EpochProgress, Event, RoundDone, RoundStarted, RunDone,
                           RunFailed, RunStarted, StageStarted)
from dpcore.results import DenseResult, ResultsError, RoundRow, RunResults, SyntheticInfo, as_results
from dpcore.summary import METHOD_ORDER, Column, Table
from dpcore.summary import instability_table as summary_instability_table  # the reports' own table

LOG_LINES = 200
ACTIVE = frozenset({"running", "queued", "pending", "stopping"})
RESUMABLE = frozenset({"stopped", "failed", "interrupted", "cancelled", "stalled"})


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 3600:
        return f"{x / 3600:.1f}h"
    if x >= 120:
        return f"{x / 60:.1f}m"
    return f"{x:.1f}s"


@dataclass
class RunLive:
    """A run's events folded into its current state."""

    run_id: str
    info: dict = field(default_factory=dict)  # RunStarted fields: experiment, method, seed, dataset, ...
    status: str = "pending"  # pending (no events yet), running, done, stopped, failed
    error: str | None = None
    stage: str = ""
    round: int = 0
    rounds: int = 0
    target_sparsity: float | None = None
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    rows: dict[int, RoundRow] = field(default_factory=dict)
    dense: DenseResult | None = None
    synthetic: SyntheticInfo | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    started_t: float | None = None
    attempt_t: float | None = None  # when the latest attempt started (its RunStarted)
    events: int = 0
    # The ETA's clock is the events' own time, so what the dashboard shows follows from the files alone.
    last_t: float | None = None  # the newest event's time
    round_t: dict[int, float] = field(default_factory=dict)  # round -> when it started (its RoundStarted)
    round_s: dict[int, float] = field(default_factory=dict)  # finished round -> its wall time, start to RoundDone

    def snapshot(self) -> "RunLive":
        """A copy the UI thread can keep while the follower goes on folding."""
        out = copy.copy(self)
        out.info, out.rows, out.log = dict(self.info), dict(self.rows), deque(self.log, maxlen=LOG_LINES)
        out.round_t, out.round_s = dict(self.round_t), dict(self.round_s)
        return out

    def fold(self, ev: Event) -> None:
        self.events += 1
        if self.started_t is None:
            self.started_t = ev.t
        self.last_t = ev.t
        line = format_event(ev)
        if line:
            self.log.append(f"[{max(0.0, ev.t - self.started_t):7.1f}s] {line}")
        if isinstance(ev, RunStarted):
            self.attempt_t = ev.t
            self.info = {k: getattr(ev, k) for k in ("experiment", "method", "variant", "seed", "dataset", "model",
                                                     "device", "node")}
            self.status, self.error, self.rounds = "running", None, ev.rounds
            self.rows = {r: row for r, row in self.rows.items() if r <= ev.resumed_after}
            self.round_s = {r: s for r, s in self.round_s.items() if r <= ev.resumed_after}
            self.round_t = {}
            self.stage, self.epoch, self.epochs = "", 0, 0
        elif isinstance(ev, StageStarted):
            self.stage, self.round = ev.stage, ev.round
            self.epoch, self.epochs, self.eta_s, self.elapsed_s, self.loss = 0, 0, None, 0.0, None
        elif isinstance(ev, EpochProgress):
            self.stage, self.round = ev.stage, ev.round
            self.epoch, self.epochs, self.eta_s, self.elapsed_s = ev.epoch, ev.epochs, ev.eta_s, ev.elapsed_s
            self.loss = ev.loss if ev.loss == ev.loss else None  # NaN -> None
        elif isinstance(ev, DenseDone):
            self.dense = DenseResult(test_acc=ev.test_acc, train_s=ev.train_s)
        elif isinstance(ev, DistillDone):
            self.synthetic = SyntheticInfo(source=ev.source, images=ev.images, distill_s=ev.distill_s, cached=ev.cached)
        elif isinstance(ev, RoundStarted):
            self.round, self.rounds, self.target_sparsity = ev.round, ev.rounds, ev.target_sparsity
            self.round_t[ev.round] = ev.t
        elif isinstance(ev, RoundDone):
            try:
                row = RoundRow.from_json(ev.row)
            except ResultsError:
                return  # a row without its round and sparsity: nothing to show
            self.rows[int(row.round)] = row
            if int(row.round) in self.round_t:
                self.round_s[int(row.round)] = ev.t - self.round_t[int(row.round)]
        elif isinstance(ev, RunDone):
            self.status, self.stage, self.eta_s = ev.status, "", None
        elif isinstance(ev, RunFailed):
            self.status, self.error, self.stage, self.eta_s = "failed", ev.error, "", None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped", "failed")


def format_event(ev: Event) -> str | None:
    """One human line per event worth logging (epoch progress is not)."""
    if isinstance(ev, RunStarted):
        resumed = f", resuming after round {ev.resumed_after}" if ev.resumed_after else ""
        where = f"{ev.device} @ {ev.node}" if ev.node else ev.device
        return (f"{ev.method}{' ' + ev.variant if ev.variant else ''} seed {ev.seed}: {ev.dataset} / {ev.model} on {where} "
                f"({ev.rounds} rounds{resumed})")
    if isinstance(ev, StageStarted):
        return f"{ev.stage}" + (f" (round {ev.round})" if ev.round else "")
    if isinstance(ev, DenseDone):
        return f"dense: test acc {pct(ev.test_acc)}, train {secs(ev.train_s)}" + (" (cached)" if ev.cached else "")
    if isinstance(ev, DistillDone):
        return (f"synthetic set: {ev.source}, {ev.images} images, time-to-distill {secs(ev.distill_s)}"
                + (" (cached)" if ev.cached else ""))
    if isinstance(ev, RoundStarted):
        return f"round {ev.round}/{ev.rounds} -> target sparsity {pct(ev.target_sparsity)}"
    if isinstance(ev, RoundDone):
        r = ev.row
        val = f"val {pct(r.get('val_acc'))}" if r.get("val_acc") is not None else "not validated"
        return (f"round {r['round']} done: sparsity {pct(r['sparsity'])}, inner {secs(r.get('inner_train_s'))}, "
                f"{val}, time-to-mask {secs(r.get('time_to_mask_s'))}")
    if isinstance(ev, RunDone):
        return f"run {ev.status} after {ev.rounds_done} rounds ({secs(ev.wall_s)})"
    if isinstance(ev, RunFailed):
        return f"FAILED: {ev.error}"
    if isinstance(ev, AnalysisDone):
        result = ev.result or {}
        extra = f": instability {pct(result['instability'])}" if isinstance(result.get("instability"), float) else ""
        return f"analysis {ev.analysis} done (round {ev.round}){extra}"
    return None


@dataclass
class RunView:
    """One row of the Runs screen: the merged state of a run."""

    run_id: str
    status: str
    error: str | None
    results: RunResults | None
    live: RunLive | None
    entry: Any | None  # launcher.LaunchEntry

    def _get(self, key: str, default: Any = None) -> Any:
        """A field of what the run is (experiment, method, seed, ...): results.json's, else its RunStarted
        event's, else its launch record's (unset: None or "")."""
        value = getattr(self.results, key, None) if self.results is not None else None
        if value is not None and value != "":
            return value
        return self._info(key, default)

    def _info(self, key: str, default: Any = None) -> Any:
        for src in (self.live.info if self.live else None, self.entry.info if self.entry is not None else None):
            if src and src.get(key) is not None and src[key] != "":
                return src[key]
        return default

    @property
    def experiment(self) -> str:
        return self._get("experiment", "")

    @property
    def method(self) -> str:
        return self._get("method", "")

    @property
    def variant(self) -> str:
        """The synthetic source of a distilled run in an experiment comparing several ("" otherwise)."""
        return self._get("variant", "")

    @property
    def group(self) -> str:
        """Method and variant, as tables group runs ("distilled dm ipc10")."""
        return f"{self.method} {self.variant}" if self.variant else self.method

    @property
    def seed(self) -> int | None:
        return self._get("seed")

    @property
    def dataset(self) -> str:
        return self._get("dataset", "")

    @property
    def model(self) -> str:
        return self._get("model", "")

    @property
    def device(self) -> str:
        """The run's device, and the cluster node (and GPUs) it runs on when an executor placed it."""
        node = self._get("node", "")
        return f"{self._get('device', '')} @ {node}" if node else self._get("device", "")

    @property
    def rounds_planned(self) -> int | None:
        planned = (self.results.rounds_planned if self.results else None) or (self.live.rounds if self.live else 0)
        return planned or self._info("rounds")

    @property
    def rows(self) -> list[RoundRow]:
        """Finished rounds: results.json's, plus any newer ones already announced by events."""
        rows = {int(r.round): r for r in (self.results.rounds if self.results else [])}
        if self.live:
            rows.update({k: v for k, v in self.live.rows.items() if k not in rows})
        return [rows[k] for k in sorted(rows)]

    @property
    def dense(self) -> DenseResult | None:
        return (self.results.dense if self.results else None) or (self.live.dense if self.live else None)

    @property
    def label(self) -> str:
        seed = "" if self.seed is None else f" s{self.seed}"
        return f"{self.experiment or '?'} {self.group or '?'}{seed}"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def results_for_tables(self) -> RunResults:
        """The run's results for :mod:`dpcore.summary`, with what its events told since (also for runs without
        results.json yet)."""
        res = self.results or RunResults()
        return replace(res, run_id=self.run_id, experiment=self.experiment, method=self.method or "?",
                       variant=self.variant, seed=self.seed if self.seed is not None else 0, rounds=self.rows,
                       dense=self.dense, status=self.status,
                       synthetic=res.synthetic or (self.live.synthetic if self.live else None))

    def sort_key(self) -> tuple:
        return (self.experiment, METHOD_ORDER.get(self.method, 9), self.variant, self.seed if self.seed is not None else -1,
                self.run_id)


def effective_status(results: RunResults | None, live: RunLive | None, entry: Any | None) -> tuple[str, str | None]:
    """(status, error) of a run, reconciling its files with its process (see module docstring)."""
    status = live.status if live and live.status != "pending" else (results.status if results else "pending")
    error = (live.error if live else None) or (results.error if results else None)
    if status != "failed":
        error = None
    if entry is None:
        return status, error
    st = entry.state
    if st == "queued":
        if entry.cancel_requested:
            return "cancelled", None
        return ("queued" if entry.runner_alive else "stalled"), None
    if st == "running":
        if entry.pid_alive and entry.slot == "ray":  # one driver runs the launch's runs: each run's files tell
            started = live.attempt_t if live and live.attempt_t else (results.started_at if results else None)
            if status in ("done", "stopped", "failed") and started and started >= entry.created:
                return status, error  # finished in this launch (not an earlier attempt's end)
            if status == "pending":  # not placed on the cluster yet
                return ("cancelled" if entry.cancel_requested else "queued"), None
        if entry.pid_alive:
            return ("stopping" if entry.cancel_requested else "running"), None
        if entry.runner_alive:  # it has just exited; the runner records the exit code next
            return status, error
        return ("interrupted" if status in ("running", "pending") else status), error
    if st == "exited":
        rc = entry.rc
        if rc == 0 or status == "failed":
            return status, error
        if rc == 130 or (entry.cancel_requested and status in ("running", "pending", "stopped")):
            return "stopped", None
        return "failed", entry.error or exit_text(rc)
    if st == "cancelled":
        return (status if status in ("done", "stopped", "failed") else "cancelled"), error
    return status, error


def exit_text(rc: int | None) -> str:
    if rc is None:
        return "the process ended without an exit code"
    if rc < 0:
        hint = " (out of memory?)" if rc == -9 else ""
        return f"the run's process was killed by signal {-rc}{hint}"
    return f"the run's process exited with code {rc}"


def build_view(run_id: str, results: RunResults | dict | None, live: RunLive | None, entry: Any | None) -> RunView:
    """``results``: the run's results.json (None: none yet); a results dict (``dptui runs`` reads them with
    :func:`dpcore.store.list_runs`) is read with :meth:`RunResults.from_json` here."""
    results = None if results is None else as_results(results)
    status, error = effective_status(results, live, entry)
    return RunView(run_id, status, error, results, live, entry)


# -- how long an active run, and its experiment, have to go (the events' time, never a clock) -------------

def round_wall_s(view: RunView) -> float | None:
    """The mean wall time of the run's finished rounds: start to end as its events tell, else as its rows
    record it (training, pruning and validation); None before its first round ends."""
    live = view.live
    if live is not None and live.round_s:
        return sum(live.round_s.values()) / len(live.round_s)
    dense = view.dense.train_s if view.dense and view.dense.train_s else 0.0
    return mean_round_s(dense, view.rows) or None


def stage_left_s(live: RunLive | None) -> float:
    """What the current stage's epoch progress says it has left (0 when it says nothing)."""
    return live.eta_s if live is not None and live.epochs and live.eta_s is not None else 0.0


def launch_info(view: RunView, key: str) -> Any:
    """A field of the run's launch record (None for a run not started from the dashboard)."""
    return (getattr(view.entry, "info", None) or {}).get(key)


def run_eta(view: RunView) -> float | None:
    """Seconds an active run has left: its rounds to go at its mean round time, less what the round in flight
    has already taken; before any round ends, the estimate its launch recorded, less the time since it started.
    Never less than what the current stage itself says it has left. None when nothing tells."""
    planned, live = view.rounds_planned, view.live
    if not view.active or not planned:
        return None
    per_round = round_wall_s(view)
    if per_round is None:
        estimate = launch_info(view, "est_wall_s")
        if estimate is None:
            return None
        started = live is not None and live.attempt_t is not None and live.last_t is not None
        return max(estimate - (live.last_t - live.attempt_t if started else 0.0), stage_left_s(live))
    done = len(view.rows)
    left = max(0, planned - done) * per_round
    if live is not None and live.round > done and live.round in live.round_t and live.last_t is not None:
        left -= min(live.last_t - live.round_t[live.round], per_round)  # a slow round is nearly over, not past
    return max(left, stage_left_s(live))


def eta_text(view: RunView) -> str:
    """An active run's time left and what it is based on, in a few words ("" for a run that is not active)."""
    if not view.active:
        return ""
    eta, per_round = run_eta(view), round_wall_s(view)
    if eta is None:
        return "run: time left unknown until a round ends"
    basis = f"{secs(per_round)}/round" if per_round is not None else "its launch's estimate"
    return f"run: {secs(eta)} left ({len(view.rows)}/{view.rounds_planned} rounds, {basis})"


@dataclass(frozen=True)
class ExperimentLeft:
    """What an experiment's active runs have left, run ``places`` at once."""

    name: str
    wall_s: float  # the runs with an ETA, packed onto the places
    places: int
    unknown: int  # active runs without an ETA (not in wall_s)

    def text(self) -> str:
        if self.unknown and not self.wall_s:  # no active run has an ETA
            return f"{self.name or '?'}: time left unknown"
        more = f" (+{self.unknown} run{'s' if self.unknown != 1 else ''} without an ETA)" if self.unknown else ""
        return f"{self.name or '?'}: {secs(self.wall_s)} left{more}, {self.places} at once"


def experiment_left(views: list[RunView]) -> ExperimentLeft | None:
    """The time left of one experiment's active runs (None when none is active). Runs at once: its launch's
    places (as many as run now, at least, when a run was not started from the dashboard)."""
    active = [v for v in views if v.active]
    if not active:
        return None
    etas = [run_eta(v) for v in active]
    known = [e for e in etas if e is not None]
    places = max([launch_info(v, "places") or 0 for v in active] + [sum(v.status == "running" for v in active), 1])
    return ExperimentLeft(active[0].experiment, pack(known, places), places, len(etas) - len(known))


def experiments_left(views: list[RunView]) -> list[ExperimentLeft]:
    """:func:`experiment_left` of each experiment (same name, dataset and model) with active runs."""
    groups: dict[tuple, list[RunView]] = {}
    for v in views:
        if v.active:
            groups.setdefault((v.experiment, v.dataset, v.model), []).append(v)
    return [left for vs in groups.values() if (left := experiment_left(vs)) is not None]


# -- the Runs listing as a row-model table (so it exports like every other table) ----------------------

RUN_COLUMNS = [
    Column("experiment", "experiment", "text"), Column("method", "method", "text"), Column("seed", "seed", "int"),
    Column("status", "status", "text"), Column("progress", "round", "text"), Column("eta", "ETA s", "sec"),
    Column("sparsity", "sparsity%", "pct"), Column("best_val", "best val%", "pct"),
    Column("t2m", "t2m s", "sec"), Column("data", "dataset/model", "text"), Column("device", "device", "text"),
    Column("run_id", "run", "text"),
]


def run_row(v: RunView) -> dict[str, Any]:
    rows = v.rows
    vals = [r.val_acc for r in rows if r.val_acc is not None]
    last = rows[-1] if rows else None
    planned = v.rounds_planned
    return {
        "experiment": v.experiment, "method": v.group, "seed": v.seed, "status": v.status,
        "progress": f"{len(rows)}/{planned or '?'}", "eta": run_eta(v), "sparsity": last.sparsity if last else None,
        "best_val": max(vals) if vals else None, "t2m": last.time_to_mask_s if last else None,
        "data": f"{v.dataset}/{v.model}" if v.dataset or v.model else "", "device": v.device, "run_id": v.run_id,
    }


def runs_listing(views: list[RunView], title: str = "Runs") -> Table:
    return Table(title, list(RUN_COLUMNS), [run_row(v) for v in views])


def instability_table(results: RunResults) -> Table:
    """The interpolation analysis of one run (its well-formed entries) as :func:`dpcore.summary.instability_table`."""
    return summary_instability_table([replace(results, instability=[{k: v for k, v in e.items() if k != "rewind_text"}
                                                                    for e in instability_items(results)])])


def instability_items(results: RunResults | None) -> list[dict]:
    """Well-formed entries of ``results.instability`` (the analysis' plain JSON, written by any version):
    round, alphas and test_acc of equal length, and what the Instability table reads (sparsity, rewind k and
    unit, both end accuracies, instability, barrier)."""
    out = []
    for item in (results.instability if results else None) or []:
        try:
            alphas, accs = list(map(float, item["alphas"])), list(map(float, item["test_acc"]))
            k, unit = int(item["rewind"]["k"]), str(item["rewind"]["unit"])
            numbers = {key: float(item[key]) for key in ("sparsity", "instability", "barrier")}
            ends, rnd = list(map(float, item["end_acc"])), int(item.get("round", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if alphas and len(alphas) == len(accs) and len(ends) == 2:
            out.append({**item, **numbers, "round": rnd, "alphas": alphas, "test_acc": accs,
                        "end_acc": ends, "rewind": {**item["rewind"], "k": k, "unit": unit},
                        "rewind_text": f"k={k}" + ("" if unit == "epoch" else " steps")})
    return out
