"""Synthetic (distilled) training sets for the IMP inner loop.

``DISTILLERS`` maps a method name to its :class:`Distiller`; adding a method means adding one
module with a ``DISTILLER`` object and listing it below.

The methods' shared pieces, one module each: ``set`` (:class:`SyntheticSet`), ``distiller`` (the
protocol, ``ProgressFn``, ``StopFn``), ``params`` (resolving and checking parameters), ``sampling``
(initial images, per-class real batches), ``rng`` (seeded networks on the device), ``dsa``
(building the augmentation), ``meta`` (loss curves and the common meta fields), ``model_spec``.
"""

from __future__ import annotations

from dpcore.errors import ConfigError
from dpcore.synthetic import dm, el2n, gm, mtt, subset
from dpcore.synthetic.distiller import Distiller
from dpcore.synthetic.params import resolve_params
from dpcore.synthetic.set import SyntheticSet

DISTILLERS: dict[str, Distiller] = {
    d.name: d for d in (dm.DISTILLER, gm.DISTILLER, mtt.DISTILLER, subset.DISTILLER, el2n.DISTILLER)
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
