"""Where a distilled run's synthetic set comes from: a file (``synthetic.path``) or a distiller through
the shared cache (``synthetic.method`` + ``ipc``).

:func:`synthetic_set` is a plain function of the source's settings, the dataset, the device, a progress
callback and a stop flag; the engine (which emits the events around it) and ``dptui distill`` both call it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, SyntheticConfig, to_dict
from ..errors import DataError
from ..models import build_model
from ..store import config_hash
from ..training import Stopped

CACHE_SUBDIR = ("cache", "synthetic")


def source_key(sc: SyntheticConfig) -> str:
    """What identifies a source (its training settings aside): sets with the same key are the same set."""
    return config_hash({k: v for k, v in to_dict(sc).items() if k in ("method", "path", "ipc", "seed", "params")})


def source_label(sc: SyntheticConfig) -> str:
    return sc.path if sc.path else f"{sc.method} ipc{sc.ipc}"


def synthetic_cache_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir).joinpath(*CACHE_SUBDIR)


def resolve_source_path(path: str, data_root: str | Path | None) -> Path:
    """``synthetic.path`` as given (absolute, or relative to the working folder), else under the data root."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    under = Path(data_root or "data").expanduser() / given
    if under.exists():
        return under
    raise DataError(f"synthetic.path '{path}': not found (looked in ./{given} and {under}); "
                    "pass --data-root pointing at the folder that holds it, or an absolute path")


def model_factory(model: ModelConfig, dataset, device: torch.device):
    """The profile's model for ``dataset`` on ``device`` (a new one per call)."""
    return lambda: build_model(model.name, num_classes=dataset.num_classes, in_shape=dataset.shape,
                               **model.options).to(device)


def load_source_file(sc: SyntheticConfig, dataset, data_root: str | Path | None):
    """A file source, checked against ``dataset`` (shape, classes, labels): see :func:`load_synthetic`."""
    from .files import load_synthetic

    path = resolve_source_path(sc.path, data_root)
    syn = load_synthetic(path, dataset)
    syn.meta["source"] = str(path)  # where it was loaded from (meta.json keeps how it was made)
    syn.meta["cached"] = None  # made elsewhere: neither made now nor reused from our cache
    return syn


def cache_entry(sc: SyntheticConfig, dataset, model: ModelConfig) -> str | None:
    """The cache folder name (under :func:`synthetic_cache_dir`) of a distilled source; None for a file."""
    from .cache import entry_key

    if sc.path:
        return None
    return entry_key(dataset, method=sc.method, ipc=sc.ipc, model={"name": model.name, **model.options},
                     seed=sc.seed, params=dict(sc.params))


def synthetic_set(sc: SyntheticConfig, dataset, device: torch.device, *, model: ModelConfig,
                  cache_dir: str | Path, data_root: str | Path | None = None, progress=None, should_stop=None):
    """The synthetic set of source ``sc`` for ``dataset``: loaded from its file, or distilled (``progress(done,
    total, loss | None)`` as it goes) and cached under ``cache_dir``, or reused from there.

    ``meta`` gets ``source`` (a label) and ``cached`` (True: reused, False: made now, None: a file).
    Raises :class:`dpcore.training.Stopped` when ``should_stop`` ends a distillation (nothing is cached)."""
    from .cache import get_or_distill

    if sc.path:
        return load_source_file(sc, dataset, data_root)
    syn, cached = get_or_distill(Path(cache_dir), dataset, method=sc.method, ipc=sc.ipc,
                                 model={"name": model.name, **model.options},
                                 model_factory=model_factory(model, dataset, device), seed=sc.seed,
                                 device=device, params=dict(sc.params), progress=progress, should_stop=should_stop)
    if syn.meta.get("stopped"):
        raise Stopped
    syn.meta.update(source=source_label(sc), cached=cached)
    return syn
