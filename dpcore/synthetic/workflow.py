"""The ``dptui distill`` workflow as library calls: choose one of a profile's synthetic sources, make (or
load, or reuse) its set, and evaluate it: train the profile's model on it once per run seed, test on the real
test split, and record that evaluation in the cached set's ``meta.json``. The CLI parses and renders only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config, SyntheticConfig, synthetic_variants
from ..errors import ConfigError
from ..training import FastPath
from .provider import model_factory, synthetic_cache_dir, synthetic_set

@dataclass(frozen=True)
class Source:
    """A profile's synthetic source picked for ``dptui distill``: the profile and the source's settings."""

    cfg: Config
    synthetic: SyntheticConfig
    label: str = ""  # its synthetic.variants label, if the profile compares several


def _pick(cfg: Config, variant: str | None, method: str | None, ipc: int | None):
    variants = synthetic_variants(cfg)
    labels = ", ".join(repr(v.label) for v in variants)
    if variant is not None:
        if not variants[0].label:
            raise ConfigError(f"--variant {variant!r}: the profile has no synthetic.variants; "
                              "use --method/--ipc to choose a source")
        found = [v for v in variants if v.label == variant]
        if not found:
            raise ConfigError(f"--variant {variant!r} is not a synthetic source of the profile; it has {labels}")
        return found[0]
    if not variants[0].label:
        replaced = method is not None and (method != cfg.synthetic.method or bool(cfg.synthetic.path))
        return None if replaced else variants[0]
    if method is None:
        raise ConfigError(f"the profile compares {len(variants)} synthetic sources; choose one with "
                          f"--variant ({labels}) or --method")
    found = [v for v in variants if v.config.method == method and not v.config.path
             and (ipc is None or v.config.ipc == ipc)]
    if len(found) > 1:
        raise ConfigError(f"--method {method}: several synthetic sources match; choose one with --variant "
                          f"({', '.join(repr(v.label) for v in found)})")
    return found[0] if found else None


def choose_source(profile: str, overrides: list[str], *, variant: str | None = None, method: str | None = None,
                  ipc: int | None = None) -> Source:
    """The profile's ``[synthetic]`` source, or one of its ``synthetic.variants`` by label (``variant``) or by
    ``method`` (+ ``ipc``). A ``method`` the profile does not have replaces its source, with that method's
    default parameters (``--set synthetic.params...`` overrides still apply); ``ipc`` overrides the count."""
    from ..profiles import load_profile

    cfg, _ = load_profile(profile, overrides)
    chosen = _pick(cfg, variant, method, ipc)
    if chosen is None:
        cfg, _ = load_profile(profile, ["synthetic.params={}", f"synthetic.method={json.dumps(method)}",
                                        'synthetic.path=""', "synthetic.variants=[]", *overrides])
        chosen = _pick(cfg, None, None, None)
    sc = replace(chosen.config, variants=[])
    if ipc is not None:
        sc = replace(sc, ipc=ipc)
    return Source(cfg, sc, chosen.label)


def make_set(src: Source, dataset, runs_dir: str | Path, data_root: str | Path | None, *,
             progress=None, should_stop=None):
    """(set, description): the source's set through :func:`synthetic_set`, and what the CLI reports of it."""
    sc = src.synthetic
    syn = synthetic_set(sc, dataset, dataset.device, model=src.cfg.model, cache_dir=synthetic_cache_dir(runs_dir),
                        data_root=data_root or src.cfg.data.root, progress=progress, should_stop=should_stop)
    key = syn.meta.get("key") if not sc.path else None
    described: dict[str, Any] = {
        "source": str(syn.meta.get("source")), "method": syn.meta.get("method", "file"),
        "ipc": syn.ipc(dataset.num_classes), "images": len(syn), "dataset": dataset.name,
        "whitened": bool(dataset.whitened), "cached": syn.meta.get("cached"), "key": key,
        "distill_s": syn.meta.get("distill_s"), "learned_lr": syn.lr,
    }
    return syn, described


def evaluate_set(syn, src: Source, dataset, *, compile: str | None = None,
                 on_epoch: Callable[[int, int, int, torch.Tensor], None] | None = None,
                 should_stop=None, cache_entry: Path | None = None) -> dict[str, Any]:
    """Train the profile's model on ``syn`` once per ``run.seeds`` (the ``[synthetic]`` training settings) and
    test each on the real test split, on the profile's fast path (``[run]`` precision, channels_last, compile;
    ``compile`` "on"/"off" overrides ``run.compile``). ``on_epoch(seed, epoch, epochs, loss)``. The evaluation
    is recorded in ``cache_entry``'s ``meta.json`` when given."""
    from ..summary import Stat
    from .evaluate import evaluate_synthetic
    from .files import record_evaluation

    cfg, sc = src.cfg, src.synthetic
    factory = model_factory(cfg.model, dataset, dataset.device)
    fast = FastPath.of(cfg.run)
    if compile is not None:
        fast = replace(fast, compile=compile)
    evals = []
    for seed in cfg.run.seeds:
        epoch_cb = None if on_epoch is None else (lambda e, n, loss, s=seed: on_epoch(s, e, n, loss))
        evals.append(evaluate_synthetic(syn, dataset, factory, sc, seed=seed, eval_batch_size=cfg.run.eval_batch_size,
                                        on_epoch=epoch_cb, should_stop=should_stop, fast=fast))
    accs = [ev.test_acc for ev in evals]
    stat = Stat.of(accs)
    result = dict(test_acc=stat.mean, test_acc_std=stat.std, test_accs=accs, seeds=list(cfg.run.seeds),
                  test_loss=sum(ev.test_loss for ev in evals) / len(evals),
                  train_s=sum(ev.train_s for ev in evals) / len(evals), test_s=evals[0].test_s,
                  model=cfg.model.name, model_options=dict(cfg.model.options), epochs=evals[0].epochs,
                  steps=evals[0].steps, lr=evals[0].lr, batch_size=sc.batch_size, momentum=sc.momentum,
                  weight_decay=sc.weight_decay, dsa=sc.dsa, compile=fast.compile, precision=fast.precision,
                  compile_s=sum(ev.compile_s for ev in evals) / len(evals))
    evaluation = {k: result[k] for k in ("test_acc", "test_accs", "train_s", "model", "model_options", "epochs",
                                         "lr", "batch_size", "dsa", "seeds")}
    syn.meta.update(evaluation=evaluation, test_acc=stat.mean)
    if cache_entry is not None:
        record_evaluation(cache_entry, evaluation)
    return result
