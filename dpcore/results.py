"""A run's results, typed: what the engine writes into ``results.json`` and what every table, figure and
screen reads from it.

The layout on disk is unchanged (schema 1): :meth:`RunResults.to_json` writes the keys, nesting and
nulls the engine has always written, and :meth:`RunResults.from_json` reads files of older and newer
versions alike. A known key that is missing reads as its default (``None`` for optional ones); a key
that is not known is kept in ``extra`` and written back, so nothing is lost.

One rule decides what is written: the fields every version has written (what a run is, its status and
rounds; a row's round and sparsity) always; an optional field (default ``None``, or ``""`` for ``variant``
and ``node``) only when it is set, except the keys the engine writes as ``null`` on purpose (``NULLABLE``
of each class: a run's ``error``, ``dense`` and ``synthetic``; a row's accuracies and validated times,
which are null for a round that was not validated). The analyses' results (``instability``,
``weight_histograms``, ``hessian``, ``landscape``, ``figures``) are kept as the plain JSON they write.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import DPError

SCHEMA = 1
ANALYSIS_KEYS = ("instability", "weight_histograms", "hessian", "landscape", "figures")  # written by the analyses


class ResultsError(DPError):
    """A results.json whose layout cannot be read (not a dict, rounds that are not rows)."""


def _known(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.metadata.get("json", True) and f.name != "extra"]


def _split(cls, d: Any, what: str) -> tuple[dict, dict]:
    """``d``'s known keys (for ``cls``'s constructor) and the rest (its ``extra``)."""
    if not isinstance(d, dict):
        raise ResultsError(f"{what}: expected a JSON object, got {type(d).__name__}")
    names = set(_known(cls))
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _dump(obj, values: dict | None = None) -> dict:
    """``obj``'s known fields in the engine's order (set ones, and the nullable ones always), then its extra keys.
    ``values``: fields already converted to JSON (the nested ones)."""
    out: dict[str, Any] = {}
    for name in _known(type(obj)):
        v = values[name] if values and name in values else getattr(obj, name)
        unset = v is None or (name in obj.SKIP_EMPTY and v == "")
        if name in obj.NULLABLE or not unset:
            out[name] = v
    for k, v in obj.extra.items():
        out.setdefault(k, v)
    return out


class _Record:
    """``from_json`` / ``to_json`` of a record of ``results.json`` (its known keys typed, the rest in ``extra``)."""

    WHAT: ClassVar[str] = ""  # how errors name it

    @classmethod
    def from_json(cls, d: dict):
        known, extra = _split(cls, d, cls.WHAT)
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        return _dump(self)


@dataclass(frozen=True)
class RoundRow:
    """One finished round of a run (``results.json["rounds"][i]``, ``round_NNN.json`` and the RoundDone event).

    Times in seconds; accuracies and sparsities as fractions. ``inner_test_acc`` is None for methods without
    an inner training (random, pruning at init); ``val_acc``, ``val_train_s`` and ``time_to_mask_validated_s``
    are None for a round that was not validated."""

    NULLABLE: ClassVar[frozenset] = frozenset({"inner_test_acc", "val_acc", "val_train_s", "time_to_mask_validated_s"})
    SKIP_EMPTY: ClassVar[frozenset] = frozenset()

    round: int
    sparsity: float
    remaining: int | None = None  # weights kept by the round's mask
    inner_train_s: float | None = None
    inner_test_acc: float | None = None
    prune_s: float | None = None
    val_acc: float | None = None
    val_train_s: float | None = None
    compile_s: float | None = None  # the torch.compile / CUDA graph warm-up of the round's trainings, apart from them
    time_to_mask_s: float | None = None
    time_to_mask_validated_s: float | None = None
    layer_sparsity: dict[str, float] | None = None  # prunable layer -> fraction pruned
    compiled: bool | None = None  # whether the round's training steps ran compiled (written only when known)
    cuda_graphs: bool | None = None  # whether its synthetic steps replayed as CUDA graphs (written when asked for)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "RoundRow":
        known, extra = _split(cls, d, "a round row")
        if "round" not in known or "sparsity" not in known:
            raise ResultsError(f"a round row without 'round' and 'sparsity': {sorted(d)}")
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        return _dump(self)

    @property
    def layers(self) -> dict[str, float]:
        """``layer_sparsity``, empty when not recorded."""
        return self.layer_sparsity or {}


@dataclass(frozen=True)
class DenseResult(_Record):
    """The dense baseline of the run's seed (``results.json["dense"]``): test accuracy and training time."""

    WHAT: ClassVar[str] = "dense"
    NULLABLE: ClassVar[frozenset] = frozenset({"test_acc", "train_s"})
    SKIP_EMPTY: ClassVar[frozenset] = frozenset()

    test_acc: float | None = None
    train_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticInfo(_Record):
    """The synthetic set of a distilled run (``results.json["synthetic"]``). ``distill_s`` is None for a set
    made elsewhere; ``cached``: read from the store's cache, made once by a shared stage or an earlier run (its
    ``distill_s`` is the time it took then)."""

    WHAT: ClassVar[str] = "synthetic"
    NULLABLE: ClassVar[frozenset] = frozenset({"source", "images", "ipc", "distill_s", "cached", "lr"})
    SKIP_EMPTY: ClassVar[frozenset] = frozenset()

    source: str | None = None
    images: int | None = None
    ipc: int | None = None
    distill_s: float | None = None
    cached: bool | None = None
    lr: float | None = None  # the set's learned learning rate, if it has one
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewindInfo(_Record):
    """The rewind point (``results.json["rewind"]``): ``k`` in ``unit`` ("epoch" or "step"), as a global
    ``step``; ``rewind_s``: the dense training's time up to it (set once the dense baseline is known)."""

    WHAT: ClassVar[str] = "rewind"
    NULLABLE: ClassVar[frozenset] = frozenset()
    SKIP_EMPTY: ClassVar[frozenset] = frozenset()

    k: int = 0
    unit: str = "epoch"
    step: int | None = None
    rewind_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """"k=1" (epochs) or "k=500 steps", as tables show it."""
        return f"k={self.k}" if self.unit == "epoch" else f"k={self.k} steps"


@dataclass
class RunResults:
    """One run's ``results.json``: what it is (method, seed, data, model, device), how far it got (status,
    rounds) and what its analyses found (kept as the plain JSON the analyses write).

    ``table_label`` is not part of the file: :func:`dpcore.summary.label_runs` sets it on copies to tell
    apart runs that would otherwise be pooled as seeds ("imp k=1"); :attr:`label` returns it when set."""

    NULLABLE: ClassVar[frozenset] = frozenset({"error", "dense", "synthetic"})
    SKIP_EMPTY: ClassVar[frozenset] = frozenset({"variant", "node"})

    schema: int = SCHEMA
    run_id: str = ""
    experiment: str = ""
    method: str = ""
    variant: str = ""  # the synthetic source's label when an experiment compares several ("" otherwise)
    seed: int = 0
    dataset: str = ""
    model: str = ""
    device: str = ""
    node: str = ""  # the cluster node it ran on, when an executor placed it ("" = here)
    threads: int | None = None
    status: str = "pending"  # running, done, stopped, failed (the engine's); pending: nothing recorded
    error: str | None = None
    traceback: str | None = None
    rounds_planned: int | None = None
    fraction: float | None = None
    rewind: RewindInfo | None = None
    dense: DenseResult | None = None
    synthetic: SyntheticInfo | None = None
    rounds: list[RoundRow] = field(default_factory=list)
    started_at: float | None = None
    updated_at: float | None = None
    prunable_weights: int | None = None
    train_images: int | None = None  # the real training images the run trained on
    peak_memory_mb: float | None = None  # its process's peak resident memory (CPU) or CUDA memory allocated (GPU)
    # the analyses' results, as they write them (dpcore.analysis.stage)
    instability: list[dict] | None = None
    weight_histograms: dict | None = None
    hessian: list[dict] | None = None
    landscape: list[dict] | None = None
    figures: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    table_label: str = field(default="", metadata={"json": False})

    @classmethod
    def from_json(cls, d: dict) -> "RunResults":
        """Read a results.json's object (any version: missing keys take their defaults, unknown ones go to ``extra``)."""
        known, extra = _split(cls, d, "results")
        rounds = known.get("rounds") or []
        if not isinstance(rounds, list):
            raise ResultsError(f"results: 'rounds' must be a list, got {type(rounds).__name__}")
        known["rounds"] = [RoundRow.from_json(r) for r in rounds]
        for key, typ in (("rewind", RewindInfo), ("dense", DenseResult), ("synthetic", SyntheticInfo)):
            if known.get(key) is not None:
                known[key] = typ.from_json(known[key])
        for key in ("variant", "node"):
            if known.get(key) is None:
                known.pop(key, None)
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        """The results.json object, in the layout the engine writes (a JSON-able dict)."""
        nested = {"rounds": [r.to_json() for r in self.rounds],
                  **{k: getattr(self, k).to_json() for k in ("rewind", "dense", "synthetic") if getattr(self, k) is not None}}
        return _dump(self, nested)

    # -- what readers ask -------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The run's group in tables: its method, plus its synthetic source when an experiment compares
        several ("distilled dm ipc10"); :attr:`table_label` instead when set."""
        return self.table_label or (f"{self.method} {self.variant}" if self.variant else self.method)

    @property
    def rows(self) -> list[RoundRow]:
        """The finished rounds (``rounds``)."""
        return self.rounds

    @property
    def last(self) -> RoundRow | None:
        """The last finished round (None before the first)."""
        return self.rounds[-1] if self.rounds else None

    @property
    def rewind_text(self) -> str:
        """The rewind point as tables show it ("k=0", "k=500 steps"); "k=0" when not recorded."""
        return (self.rewind or RewindInfo()).text

    @property
    def distill_s(self) -> float | None:
        """Time-to-distill of a distilled run's synthetic set (None: no set, or one made elsewhere)."""
        return self.synthetic.distill_s if self.synthetic else None

    def val_accs(self) -> list[float]:
        """The validated accuracies of its rounds, in order (rounds not validated left out)."""
        return [r.val_acc for r in self.rounds if r.val_acc is not None]

    def row(self, rnd: int) -> RoundRow | None:
        """Round ``rnd``'s row (None when not finished)."""
        return next((r for r in self.rounds if r.round == rnd), None)


def as_results(res: "RunResults | dict") -> RunResults:
    """``res`` as :class:`RunResults`; a results dict (what the engine and executors still return) is read with
    :meth:`RunResults.from_json`. Only the entry points that receive results from outside call this."""
    return res if isinstance(res, RunResults) else RunResults.from_json(res)


def load_results(path: str | Path) -> RunResults | None:
    """A run's results.json (the file, or the run directory holding it); None when there is none yet."""
    from .store import read_json

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        return None
    data = read_json(path)
    try:
        return RunResults.from_json(data)
    except ResultsError as err:
        raise ResultsError(f"{path}: not a dptui results file ({err})") from None
