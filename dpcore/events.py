"""Typed events the engine emits. Each serialises to one JSON object (one line of events.jsonl)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    run_id: str
    t: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    experiment: str
    method: str
    seed: int
    dataset: str
    model: str
    device: str
    rounds: int
    resumed_after: int  # last finished round found on disk (0 = fresh)
    variant: str = ""  # the distilled run's synthetic source, when an experiment compares several
    node: str = ""  # the cluster node (and GPUs) an executor placed the run on; "" = the launching machine


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage begins: "dense", "distill", "inner", "prune", "validate"; after the rounds, the
    analyses' "rewind" (capturing an extra rewind point), "instability" (one of the two trainings),
    "interpolate" (EpochProgress counts alphas) and "figures"."""

    kind: ClassVar[str] = "stage_started"
    stage: str
    round: int


@dataclass(frozen=True)
class EpochProgress(Event):
    kind: ClassVar[str] = "epoch_progress"
    stage: str
    round: int
    epoch: int
    epochs: int
    loss: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class DenseDone(Event):
    kind: ClassVar[str] = "dense_done"
    test_acc: float
    train_s: float
    cached: bool


@dataclass(frozen=True)
class DistillDone(Event):
    kind: ClassVar[str] = "distill_done"
    source: str
    images: int
    distill_s: float | None
    cached: bool


@dataclass(frozen=True)
class RoundStarted(Event):
    kind: ClassVar[str] = "round_started"
    round: int
    rounds: int
    target_sparsity: float


@dataclass(frozen=True)
class RoundDone(Event):
    kind: ClassVar[str] = "round_done"
    row: dict  # the round's row, as in results.json


@dataclass(frozen=True)
class AnalysisDone(Event):
    """An analysis finished: "instability" (one mask and rewind point), "histograms" or "figures"."""

    kind: ClassVar[str] = "analysis_done"
    analysis: str
    round: int
    result: dict  # instability: sparsity, rewind, instability, barrier, end_acc; figures: files


@dataclass(frozen=True)
class RunDone(Event):
    kind: ClassVar[str] = "run_done"
    status: str  # "done" or "stopped"
    rounds_done: int
    wall_s: float


@dataclass(frozen=True)
class RunFailed(Event):
    kind: ClassVar[str] = "run_failed"
    error: str


@dataclass(frozen=True)
class Waiting(Event):
    """Another process holds the claim on work this one needs (a run, a dense baseline, a synthetic set):
    this one waits for it, then reads what it made. Sent to the sink only, not written into a run's events."""

    kind: ClassVar[str] = "waiting"
    what: str  # "this run", "the dense baseline of seed 0", "synthetic set 'dm ipc10'"
    holder: str  # "process 1234 since 10:42:01", or "" when unknown


@dataclass(frozen=True)
class CompileFallback(Event):
    """A training that was to run compiled (``path = "compile"``) or as CUDA graphs (``"cuda_graphs"``) fell back
    to eager, compiling or capturing having failed: its timings are eager ones. ``error`` says why."""

    kind: ClassVar[str] = "compile_fallback"
    round: int
    error: str
    path: str = "compile"  # the round row's flag that says so: "compile" -> compiled, "cuda_graphs"


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in
                                       (RunStarted, StageStarted, EpochProgress, DenseDone, DistillDone,
                                        RoundStarted, RoundDone, AnalysisDone, RunDone, RunFailed, Waiting,
                                        CompileFallback)}

Sink = Callable[[Event], None]


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild a typed event from its JSON object (unknown fields from newer versions are ignored)."""
    cls = EVENT_TYPES[data["kind"]]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def fan_out(*sinks: Sink | None) -> Sink:
    live = [s for s in sinks if s is not None]

    def sink(event: Event) -> None:
        for s in live:
            s(event)
    return sink
