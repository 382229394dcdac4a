"""The synthetic sets of an experiment's distilled runs: loaded from files or distilled (through the
shared cache) on first use, once per source, and shared by every run and seed that uses it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import Config, to_dict
from ..events import DistillDone
from ..models import build_model
from ..store import config_hash
from ..training import Stopped
from .base import SyntheticSet

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Run


def synthetic_provider(cfg: Config, runs_dir: Path, data_root: str | Path | None):
    """A function giving a distilled run its synthetic set (``run.cfg.synthetic``: the run's own source)."""
    from .cache import get_or_distill
    from .files import load_synthetic

    made: dict[str, SyntheticSet] = {}  # per source (an experiment may compare several)

    def provide(run: "Run") -> SyntheticSet:
        sc = run.cfg.synthetic
        key = config_hash({k: v for k, v in to_dict(sc).items()
                           if k in ("method", "path", "ipc", "seed", "params")})
        if key not in made:
            if sc.path:
                path = Path(sc.path).expanduser()
                if not path.exists():
                    path = Path(data_root or cfg.data.root or "data") / sc.path
                syn = load_synthetic(path, run.ds)
                syn.meta.setdefault("source", str(path))
                syn.meta["cached"] = True
            else:
                def progress(step: int, total: int, loss: float | None) -> None:
                    run.on_epoch(step, total, torch.tensor(float("nan") if loss is None else loss))

                model_spec = {"name": cfg.model.name, **cfg.model.options}
                factory = lambda: build_model(cfg.model.name, num_classes=run.ds.num_classes,  # noqa: E731
                                              in_shape=run.ds.shape, **cfg.model.options).to(run.device)
                syn, cached = get_or_distill(Path(runs_dir) / "cache" / "synthetic", run.ds, method=sc.method,
                                             ipc=sc.ipc, model=model_spec, model_factory=factory, seed=sc.seed,
                                             device=run.device, params=dict(sc.params), progress=progress,
                                             should_stop=run.should_stop)
                if syn.meta.get("stopped"):
                    raise Stopped
                syn.meta["source"] = f"{sc.method} ipc{sc.ipc}"
                syn.meta["cached"] = cached
            made[key] = syn
        syn = made[key]
        run.event(DistillDone, source=str(syn.meta.get("source")), images=int(syn.images.shape[0]),
                  distill_s=syn.meta.get("distill_s"), cached=bool(syn.meta.get("cached")))
        return syn

    return provide
