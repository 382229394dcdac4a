"""A method's parameters: merged over its defaults, type-checked, and checked against the data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dpcore.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from dpcore.data.dataset import Dataset


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
            f"synthetic method {method!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}. "
            f"Parameters of another method (the profile's?) stay unless dropped: add --set 'synthetic.params={{}}' "
            f"after --set 'synthetic.method=\"{method}\"' (then --set synthetic.params.KEY=VALUE for its own)"
        )
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        out[key] = coerce(method, key, value, default)
    return out


def coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (bool, int, float or str); ConfigError when it is not one."""
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
