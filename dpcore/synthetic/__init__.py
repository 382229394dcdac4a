"""Synthetic (distilled) training sets for the IMP inner loop.

``DISTILLERS`` maps a method name to its :class:`Distiller`; adding a method means adding one
module with a ``DISTILLER`` object and listing it below.
"""

from __future__ import annotations

from dpcore.errors import ConfigError
from dpcore.synthetic import dm, gm, mtt, subset
from dpcore.synthetic.base import Distiller, SyntheticSet, resolve_params

DISTILLERS: dict[str, Distiller] = {
    d.name: d for d in (dm.DISTILLER, gm.DISTILLER, mtt.DISTILLER, subset.DISTILLER)
}


def get_distiller(name: str) -> Distiller:
    try:
        return DISTILLERS[name]
    except KeyError:
        raise ConfigError(f"unknown synthetic method {name!r}; allowed: {', '.join(sorted(DISTILLERS))}") from None


from dpcore.synthetic.cache import get_or_distill, synthetic_key  # noqa: E402
from dpcore.synthetic.files import load_synthetic, save_synthetic  # noqa: E402

__all__ = [
    "DISTILLERS",
    "Distiller",
    "SyntheticSet",
    "get_distiller",
    "get_or_distill",
    "load_synthetic",
    "resolve_params",
    "save_synthetic",
    "synthetic_key",
]
