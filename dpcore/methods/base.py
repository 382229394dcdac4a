"""The interface every pruning method implements, and the registry the engine looks methods up in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import ConfigError
from ..masks import Mask

if TYPE_CHECKING:
    import torch

    from ..config import Config, SyntheticConfig, SyntheticVariant
    from ..engine import Run


@dataclass(frozen=True)
class Inner:
    """A round's inner training of mask m_{r-1}: its time, its test accuracy, its compile warm-up (apart)."""

    train_s: float
    test_acc: float | None
    compile_s: float = 0.0
    compiled: bool | None = None  # None: no compile asked for; False: it fell back to eager (``fallback`` says why)
    fallback: str | None = None
    graphed: bool | None = None  # None: no CUDA graphs asked for; False: they fell back to eager
    graph_fallback: str | None = None  # why (the capture's error)

    @classmethod
    def of(cls, out, test_acc: float | None) -> "Inner":
        """From a :class:`~dpcore.training.TrainOutcome` and the trained model's test accuracy."""
        asked = out.compiled or out.fallback is not None
        return cls(out.train_s, test_acc, out.compile_s, out.compiled if asked else None, out.fallback,
                   out.graphed, out.graph_fallback)


class PruningMethod:
    """One way to a mask, per round r: ``inner`` trains m_{r-1} (or not), ``prune`` scores and cuts to round
    r's target, ``time_to_mask`` adds up what finding the mask cost. One instance per run (it may keep state)."""

    name: ClassVar[str] = ""
    trains_on: ClassVar[str] = "none"  # what the inner loop trains on: "real", "synthetic" or "none"
    prune_keys: ClassVar[tuple[str, ...]] = ()  # [prune] settings only this method reads (part of its identity)

    # -- planning ------------------------------------------------------------------------------
    @classmethod
    def sources(cls, cfg: Config) -> list[SyntheticVariant | None]:
        """One run per entry: None, or (distilled) one per synthetic source."""
        return [None]

    @classmethod
    def identity(cls, cfg: Config, synthetic: SyntheticConfig | None) -> dict:
        """What this method adds to a run's identity beyond the settings every run has."""
        return {}

    # -- the run -------------------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        """Before the first round (after the dense baseline): e.g. get the synthetic set."""

    def inner(self, run: Run, model: torch.nn.Module, rewind: dict, mask: Mask, r: int) -> Inner | None:
        """Train ``model`` with ``mask`` from ``rewind`` for round ``r`` (its weights are then scored), or None."""
        return None

    def prune(self, run: Run, model: torch.nn.Module, mask: Mask, r: int, kw: dict) -> Mask:
        """The mask of round ``r`` (``kw``: the target's ``total_round``/``fraction``/``scope``/``output_fraction``).
        ``model`` holds what ``inner`` trained, or the rewind point when it trained nothing."""
        raise NotImplementedError

    def time_to_mask(self, before: float, inner: Inner | None, prune_s: float, rewind_s: float) -> float:
        """Time to this round's mask: the rounds before it, plus this round's inner training and pruning."""
        return before + (inner.train_s if inner else 0.0) + prune_s

    def validated(self, run: Run, r: int, model: torch.nn.Module, acc: float, train_s: float) -> None:
        """Round ``r``'s mask was trained on real data from the rewind point (``model`` holds the result)."""

    def divergence(self, run: Run) -> tuple[float, str, str]:
        """(learning rate, the setting to lower, where it trained) for a diverged inner training."""
        return run.cfg.train.lr, "train.lr", "on real data"


_REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Make ``cls`` available as ``prune.methods = ["<cls.name>"]`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> type[PruningMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"prune.methods: unknown method {name!r}; choose from {', '.join(_REGISTRY)}") from None


def prune_keys() -> set[str]:
    """Every [prune] setting that belongs to some method only (left out of the identity of the others)."""
    return {k for cls in _REGISTRY.values() for k in cls.prune_keys}
