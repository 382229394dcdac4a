"""A run's identity and an experiment's plan: one run per seed x method (x synthetic source for distilled).

A run's id is the hash of everything that determines its results (:func:`run_identity`), so the same settings
find the same run in the store, and a change that alters results makes a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config, SyntheticConfig, to_dict
from ..methods import get_method, prune_keys
from ..store import config_hash

ENGINE_VERSION = 2  # bump when a change alters results, so old runs are not resumed into new ones


def run_identity(cfg: Config, method: str, seed: int, device: torch.device,
                 synthetic: SyntheticConfig | None = None) -> dict:
    """Everything that determines a run's results, in canonical form (hashed into its id).

    ``synthetic``: the distilled run's source (one of :func:`synthetic_variants`; default ``[synthetic]``).
    A variant's label is not part of it: renaming a variant keeps its runs."""
    d = to_dict(cfg)
    strategy = get_method(method)
    owned = prune_keys()  # [prune] settings of one method only: in that method's identity, not the others'
    ident = {
        "engine": ENGINE_VERSION,
        "method": method,
        "seed": seed,
        "device": device.type,
        "data": {k: v for k, v in d["data"].items() if k != "root"},
        "model": d["model"],
        "train": {k: v for k, v in d["train"].items() if k != "warmup" or v},  # no warm-up: ids as before
        "prune": {k: v for k, v in d["prune"].items() if k != "methods" and k not in owned},
    }
    for key, extra in strategy.identity(cfg, synthetic).items():
        ident[key] = {**ident[key], **extra} if isinstance(ident.get(key), dict) else extra
    if cfg.run.threads and device.type == "cpu":  # absent when unset, so existing ids do not change
        ident["threads"] = cfg.run.threads
    fast = {k: getattr(cfg.run, k) for k, off in (("precision", "fp32"), ("channels_last", False), ("compile", "auto"))
            if getattr(cfg.run, k) != off}  # the fast path, only when not default (ids as before); under
    if fast:  # "train", so the dense baseline's cache key has it too
        ident["train"] = {**ident["train"], **fast}
    if cfg.analysis.requested:  # absent for runs without analyses, so their ids do not change
        a = d["analysis"]
        ident["analysis"] = {**{k: v for k, v in a.items() if k != "figures"},
                             "instability_rewinds": sorted(set(a["instability_rewinds"])),
                             "instability_rounds": sorted(set(a["instability_rounds"])),
                             "histogram_rounds": sorted(set(a["histogram_rounds"]))}
        for prefix in ("hessian", "landscape"):  # absent when unset, so existing ids do not change
            rounds = a[f"{prefix}_rounds"]
            for k in [k for k in ident["analysis"] if k.startswith(f"{prefix}_")]:
                del ident["analysis"][k]
            if rounds:
                ident["analysis"].update({k: v for k, v in a.items() if k.startswith(f"{prefix}_")},
                                         **{f"{prefix}_rounds": sorted(set(rounds))})
    return ident


@dataclass(frozen=True)
class RunPlan:
    method: str
    seed: int
    run_id: str
    identity: dict
    variant: str = ""  # the synthetic source's label when an experiment compares several
    synthetic: SyntheticConfig | None = None  # that source's settings (None: [synthetic])

    @property
    def label(self) -> str:
        return f"{self.method} {self.variant}" if self.variant else self.method


def plan_runs(cfg: Config, device: torch.device) -> list[RunPlan]:
    """One run per seed x method, and per synthetic source for ``distilled``."""
    plans = []
    for seed in cfg.run.seeds:
        for method in cfg.prune.methods:
            for v in get_method(method).sources(cfg):
                sc = v.config if v is not None and v.label else None
                ident = run_identity(cfg, method, seed, device, sc)
                plans.append(RunPlan(method, seed, config_hash(ident), ident, v.label if v else "", sc))
    return plans
