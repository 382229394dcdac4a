"""A content-addressed cache of distilled sets: ``<cache_dir>/<key>/`` in MTT's file layout.

The key hashes everything that determines the result (dataset, whitening, method, ipc, embedder
model and options, seed, method parameters merged over the method's defaults, which for MTT and GM
depend on the dataset and ipc). An entry appears
atomically (written into a temp folder, then renamed), so an interrupted distillation never
leaves a half entry; a stopped (incomplete) distillation is not cached at all. Methods whose
``distill`` takes a ``workdir`` get the cache folder for their reusable intermediates (MTT keeps its
expert trajectories in ``<cache_dir>/experts/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dpcore.errors import ConfigError, DataError, DataWarning
from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.params import resolve_params
from dpcore.synthetic.set import SyntheticSet
from dpcore.synthetic.files import IMAGES_FILE, load_synthetic, save_synthetic

CACHE_VERSION = 2
_STALE_TMP_S = 24 * 3600


def canonical_model(model: dict[str, Any]) -> dict[str, Any]:
    """``{"name": ..., "options": {...}}`` with the model's default options filled in.

    Accepts either that form or a flat ``{"name": ..., <option>: ...}`` dict.
    """
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(f"synthetic cache: model must be a dict with a 'name' (and options), got {model!r}")
    name = model["name"]
    if "options" in model:
        extra = sorted(set(model) - {"name", "options"})
        if extra:
            raise ConfigError(f"synthetic cache: model dict has unexpected key(s) {', '.join(extra)}; use name and options")
        options = dict(model["options"] or {})
    else:
        options = {k: v for k, v in model.items() if k != "name"}
    try:
        from dpcore.models import model_options

        options = {**model_options(name), **options}
    except (ImportError, ConfigError):
        pass  # a model outside the registry: hash its options as given
    return {"name": name, "options": options}


def resolve_for(distiller, dataset_name: str, ipc: int, params: dict[str, Any] | None) -> dict[str, Any]:
    """A method's full parameters: its own ``resolve(dataset, ipc, params)`` when its defaults depend on
    the dataset and ipc (MTT, GM), else ``params`` merged over its ``defaults``."""
    resolve = getattr(distiller, "resolve", None)
    if callable(resolve):
        return resolve(dataset_name, ipc, params)
    return resolve_params(distiller.name, distiller.defaults, params)


def _accepts_workdir(distiller) -> bool:
    try:
        sig = inspect.signature(distiller.distill)
    except (TypeError, ValueError):
        return False
    return "workdir" in sig.parameters


def _canonical_params(method: str, params: dict[str, Any] | None, dataset_name: str, ipc: int) -> dict[str, Any]:
    from dpcore.synthetic import DISTILLERS

    distiller = DISTILLERS.get(method)
    if distiller is None:
        return dict(params or {})
    return resolve_for(distiller, dataset_name, ipc, params)


def synthetic_key(
    dataset_name: str,
    method: str,
    ipc: int,
    model: dict[str, Any],
    seed: int,
    params: dict[str, Any],
    whitened: bool,
    train_per_class: int = 0,
) -> str:
    """First 16 hex chars of the sha256 of the canonical JSON (sorted keys) of the inputs.

    Params are merged over the method's defaults and model options over the model's defaults
    first, so stating a default explicitly gives the same key as leaving it out.
    """
    payload = {
        "v": CACHE_VERSION,
        "dataset": dataset_name,
        "whitened": bool(whitened),
        "method": method,
        "ipc": int(ipc),
        "model": canonical_model(model),
        "seed": int(seed),
        "params": _canonical_params(method, params, dataset_name, int(ipc)),
    }
    if train_per_class:  # distilled from a subset of the train split (data.subset): another set
        payload["train_per_class"] = int(train_per_class)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _discard(path: Path) -> None:
    """Remove a folder: rename it aside first so a reader never sees it half deleted."""
    aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _sweep_stale(cache_dir: Path) -> None:
    """Delete temp folders left by killed processes (older than a day)."""
    now = time.time()
    for child in cache_dir.glob(".*"):
        if child.name.startswith((".tmp-", ".trash-")) and child.is_dir():
            with contextlib.suppress(OSError):
                if now - child.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(child, ignore_errors=True)


def entry_key(dataset, *, method: str, ipc: int, model: dict[str, Any], seed: int,
              params: dict[str, Any] | None = None) -> str:
    """The cache entry (folder name under the cache dir) of a distillation with these inputs."""
    from dpcore.synthetic import get_distiller

    merged = resolve_for(get_distiller(method), dataset.name, ipc, params)
    return synthetic_key(dataset.name, method, ipc, canonical_model(model), seed, merged, dataset.whitened,
                         getattr(dataset, "train_per_class", 0))


def get_or_distill(
    cache_dir: str | os.PathLike[str],
    dataset,
    *,
    method: str,
    ipc: int,
    model: dict[str, Any],
    model_factory: Callable[[], nn.Module],
    seed: int,
    device: torch.device | str,
    params: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[SyntheticSet, bool]:
    """Return ``(set, was_cached)``: the cached set for these inputs, or a fresh distillation
    (which is then cached unless it was stopped early)."""
    from dpcore.synthetic import get_distiller

    distiller = get_distiller(method)
    merged = resolve_for(distiller, dataset.name, ipc, params)
    canon_model = canonical_model(model)
    key = entry_key(dataset, method=method, ipc=ipc, model=model, seed=seed, params=params)
    cache_dir = Path(cache_dir)
    entry = cache_dir / key

    if entry.is_dir():
        if (entry / IMAGES_FILE).is_file():
            try:
                syn = load_synthetic(entry, dataset)
            except DataError as exc:
                warnings.warn(DataWarning(f"{entry}: cached synthetic set is unreadable ({exc}); distilling it again"),
                              stacklevel=2)
                _discard(entry)
            else:
                syn.meta["key"] = key
                return syn, True
        else:
            _discard(entry)

    syn = distiller.distill(
        dataset,
        ipc=ipc,
        model_factory=model_factory,
        seed=seed,
        device=device,
        params=merged,
        progress=progress,
        should_stop=should_stop,
        # A folder for reusable intermediates (MTT's expert trajectories), for methods that take one.
        **({"workdir": cache_dir} if _accepts_workdir(distiller) else {}),
    )
    syn.meta.update(key=key, model=canon_model)
    if syn.meta.get("stopped"):
        return syn, False
    bad = int((~torch.isfinite(syn.images)).sum())
    if bad:  # never cache, or train on, a diverged set
        lrs = ", ".join(f"{k} = {v:g}" for k, v in merged.items() if k.startswith("lr") and isinstance(v, (int, float)))
        raise DataError(f"synthetic method '{method}' (ipc {ipc}) diverged: {bad} image values are NaN/inf; "
                        f"lower its learning rate in synthetic.params ({lrs or 'see its defaults'})")

    cache_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale(cache_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
    try:
        os.chmod(tmp, 0o755)
        save_synthetic(syn, tmp)
        os.rename(tmp, entry)
    except OSError:
        # Another process may have finished the same entry first: keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / IMAGES_FILE).is_file():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return syn, False
