"""Check a whole experiment before its first training step, so bad input costs seconds, not a round.

:func:`check_experiment` resolves the device (``cuda:N`` must exist), makes sure the run store can be
created and written, loads the dataset (every split it needs), builds the model for the dataset's shape
and runs it on two images, and checks every synthetic source of the distilled runs: a file must exist,
load safely and match the dataset (shape, classes, labels); a distiller must be known, its parameters
valid and every class hold ``ipc`` images. Each failure is one :class:`~dpcore.errors.DPError` line
(what, where, how to fix); nothing in the store is touched. What it loaded is handed to the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, SyntheticConfig, synthetic_variants
from .data import load_dataset
from .data.dataset import Dataset
from .errors import ConfigError, DataError, DPError
from .sinks import check_log_sinks


@dataclass
class Checked:
    """An experiment that passed :func:`check_experiment`: its device, its data, its file sources."""

    device: torch.device
    dataset: Dataset
    files: dict[str, object] = field(default_factory=dict)  # source_key -> SyntheticSet loaded from a file


def resolve_device(name: str) -> torch.device:
    """``run.device`` as a torch device: ``auto`` is CUDA when there is one; ``cuda:N`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device = '{name}' but no CUDA device is available; "
                              "use run.device = 'auto' or 'cpu'")
        index = torch.device(name).index
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ConfigError(f"run.device = '{name}' but this machine has {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1}); pick one of them or 'auto'")
    return torch.device(name)


def check_runs_dir(runs_dir: str | Path) -> Path:
    """Create the run store if needed and prove it is writable (a probe file, removed at once)."""
    root = Path(runs_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DPError(f"run store '{runs_dir}' cannot be created or written ({err.strerror or err}); "
                      "pass --runs-dir (or set DPTUI_RUNS_DIR) to a folder you can write") from None
    return root


def load_data(cfg: Config, data_root: str | Path | None, device: torch.device) -> Dataset:
    """The experiment's dataset (``data.subset`` applied) on ``device``."""
    root = data_root or cfg.data.root or "data"
    ds = load_dataset(cfg.data.dataset, root, path=cfg.data.path or None, zca=cfg.data.zca)
    if cfg.data.subset:
        ds = ds.subset(cfg.data.subset, seed=0)
    return ds.to(device)


def check_model(cfg: Config, dataset: Dataset) -> None:
    """The model builds for the dataset's shape and classes, and a forward pass of two images works."""
    from .models import build_model

    try:
        model = build_model(cfg.model.name, num_classes=dataset.num_classes, in_shape=dataset.shape,
                            **cfg.model.options)
        with torch.no_grad():
            model.eval()(torch.zeros(2, *dataset.shape))
    except (ConfigError, RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"model.name = '{cfg.model.name}' does not fit {dataset.name}'s images of shape "
                          f"{tuple(dataset.shape)} ({first}); choose another model.name or model options") from None


def check_source(sc: SyntheticConfig, where: str, dataset: Dataset, data_root: str | Path | None):
    """One synthetic source: a file is loaded and checked (returned, to be reused); a distiller's name,
    parameters and ``ipc`` are checked without distilling (returns None)."""
    from .synthetic import get_distiller
    from .synthetic.cache import resolve_for
    from .synthetic.provider import load_source_file

    try:
        if sc.path:
            return load_source_file(sc, dataset, data_root)
        if not sc.method:
            raise ConfigError("set synthetic.method (dm, gm, mtt, random-subset) or synthetic.path")
        distiller = get_distiller(sc.method)
        resolve_for(distiller, dataset.name, sc.ipc, dict(sc.params))
        counts = torch.bincount(dataset.y_train.cpu(), minlength=dataset.num_classes)
        if int(counts.min()) < sc.ipc:
            c = int(counts.argmin())
            raise DataError(f"class {c} of {dataset.name} has only {int(counts[c])} training images but "
                            f"ipc = {sc.ipc}; lower ipc to at most {int(counts.min())}")
    except DPError as err:
        raise type(err)(f"{where}: {err}") from None
    return None


def check_experiment(cfg: Config, runs_dir: str | Path, data_root: str | Path | None, *,
                     device: torch.device | None = None) -> Checked:
    """Every check above, in the order a user would fix them; raises the first failure."""
    from .synthetic.provider import source_key

    device = device or resolve_device(cfg.run.device)
    check_runs_dir(runs_dir)
    check_log_sinks(cfg)  # [run] log: each sink's package is installed
    dataset = load_data(cfg, data_root, device)
    check_model(cfg, dataset)
    files = {}
    if "distilled" in cfg.prune.methods:
        for i, v in enumerate(synthetic_variants(cfg)):
            where = f"synthetic.variants[{i}]" if v.label else "[synthetic]"
            syn = check_source(v.config, where, dataset, data_root or cfg.data.root)
            if syn is not None:
                files[source_key(v.config)] = syn
    return Checked(device, dataset, files)


def validate_experiment(cfg: Config, runs_dir: str | Path, data_root: str | Path | None) -> None:
    """:func:`check_experiment` without keeping anything (the dashboard's Launch screen): data on the CPU.
    A Ray launch's device is the cluster's, so it is not looked for here."""
    if cfg.run.executor != "ray":
        resolve_device(cfg.run.device)
    check_experiment(cfg, runs_dir, data_root, device=torch.device("cpu"))
