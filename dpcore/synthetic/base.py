"""The synthetic set type and the interface every distillation method implements.

A method is one module exposing an object that follows :class:`Distiller`; it is listed in
``dpcore.synthetic.DISTILLERS`` under its ``name``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from dpcore.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.data.dataset import Dataset

ProgressFn = Callable[[int, int, "float | None"], None]
StopFn = Callable[[], bool]


@dataclass
class SyntheticSet:
    """A small training set in the dataset's model-input space.

    ``images`` are float32 [N, C, H, W], normalised like ``Dataset.prepare`` output (or in ZCA
    space when the dataset is whitened); ``labels`` are int64 [N]. ``lr`` is a learned learning
    rate when the method produced one (e.g. MTT), else None. ``meta`` is JSON-serialisable.
    """

    images: Tensor
    labels: Tensor
    lr: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "SyntheticSet":
        return SyntheticSet(self.images.to(device), self.labels.to(device), self.lr, dict(self.meta))

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()

    def ipc(self, num_classes: int) -> int | None:
        """Images per class when every class has the same number, else None."""
        counts = set(self.class_counts(num_classes))
        return counts.pop() if len(counts) == 1 else None


@runtime_checkable
class Distiller(Protocol):
    """A dataset distillation (or selection) method.

    Optional extras a method may have: ``resolve(dataset_name, ipc, params) -> dict`` when its
    defaults depend on the dataset and ipc (MTT, GM; the cache hashes its result), and a
    ``workdir`` keyword in ``distill`` to receive a folder for reusable intermediates (MTT's
    expert trajectories; the cache passes its own folder).
    """

    name: str
    defaults: dict[str, Any]

    def distill(
        self,
        dataset: "Dataset",
        *,
        ipc: int,
        model_factory: Callable[[], nn.Module],
        seed: int,
        device: torch.device | str,
        params: dict[str, Any],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> SyntheticSet: ...


def resolve_params(method: str, defaults: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``params`` over ``defaults``, checking names and coercing types to the defaults'.

    The result is canonical (``lr_img=1`` and ``lr_img=1.0`` give the same dict), so it can be
    hashed for the cache. Raises ConfigError on unknown keys or values of the wrong type.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) if defaults else "none (this method takes no parameters)"
        raise ConfigError(
            f"synthetic method {method!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}"
        )
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        out[key] = _coerce(method, key, value, default)
    return out


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    where = f"synthetic method {method!r}, parameter {key!r}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def check_positive(method: str, params: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if not params[key] > 0:
            raise ConfigError(f"synthetic method {method!r}: {key} must be > 0, got {params[key]!r}")


def check_ipc(dataset: "Dataset", ipc: int, method: str) -> Tensor:
    """Validate ``ipc`` against the dataset; return the per-class train counts (CPU int64)."""
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ConfigError(f"synthetic method {method!r}: ipc must be an integer >= 1, got {ipc!r}")
    counts = torch.bincount(dataset.y_train.cpu(), minlength=dataset.num_classes)
    short = (counts < ipc).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise DataError(
            f"dataset {dataset.name}: class {c} has only {int(counts[c])} training images but ipc={ipc}; "
            f"lower ipc to at most {int(counts.min())}"
        )
    return counts


def class_sorted_index(y: Tensor, num_classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random order of the train indices grouped by class (CPU).

    Returns (order, starts, counts): ``order[starts[c] : starts[c] + counts[c]]`` is a random
    permutation of the indices of class ``c`` (seeded by ``gen``).
    """
    y = y.cpu()
    keys = torch.rand(y.shape[0], generator=gen, dtype=torch.float64) + y.to(torch.float64) * 2.0
    order = torch.argsort(keys)
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def take_per_class(order: Tensor, starts: Tensor, take: Tensor, first: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``order[starts[c] + first + j]`` for j < take[c], class-major; and their classes."""
    classes = torch.repeat_interleave(torch.arange(take.shape[0]), take)
    offsets = torch.cumsum(take, 0) - take
    pos = torch.arange(int(take.sum())) - torch.repeat_interleave(offsets, take)
    return order[starts[classes] + first + pos], classes


class Timer:
    """Wall time of a distillation, synchronising CUDA so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.t0 = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)

    def elapsed(self) -> float:
        self._sync()
        return time.perf_counter() - self.t0


def model_from_spec(method: str, spec: str, dataset, default: Callable[[], nn.Module],
                    device: torch.device) -> Callable[[], nn.Module]:
    """The network factory a method distils with: ``default`` (the profile's model) for ``""``, else a
    registry model for ``dataset`` named by ``"name"`` or ``"name:option=value,option=value"``
    (e.g. ``"convnet:width=32"``; integer values are read as integers)."""
    if not spec:
        return default
    from dpcore.models import build_model

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"synthetic method {method!r}: bad model spec {spec!r}; write name:option=value,...")
        value = value.strip()
        options[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    name = name.strip()

    def factory() -> nn.Module:
        return build_model(name, num_classes=dataset.num_classes, in_shape=dataset.shape, **options).to(device)

    try:
        factory()
    except ConfigError as err:
        raise ConfigError(f"synthetic method {method!r}: model spec {spec!r}: {err}") from None
    return factory
