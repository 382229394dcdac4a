"""Distilled Pruning: IMP whose inner training runs on a synthetic set (one run per synthetic source)."""

from __future__ import annotations

from ..config import synthetic_variants, to_dict
from ..events import DistillDone
from ..masks import magnitude_prune
from .base import Inner, PruningMethod


class Distilled(PruningMethod):
    name = "distilled"
    trains_on = "synthetic"

    def __init__(self):
        self.syn = None

    @classmethod
    def sources(cls, cfg):
        return list(synthetic_variants(cfg))

    @classmethod
    def identity(cls, cfg, synthetic):
        return {"synthetic": {k: v for k, v in to_dict(synthetic or cfg.synthetic).items() if k != "variants"}}

    def prepare(self, run) -> None:
        run.start_stage("distill")
        syn = self.syn = run.sources.get(run.cfg.synthetic, run.on_distill_progress, run.should_stop)
        run.event(DistillDone, source=str(syn.meta.get("source")), images=len(syn),
                  distill_s=syn.meta.get("distill_s"), cached=bool(syn.meta.get("cached")))
        ipc = syn.meta.get("ipc") or syn.ipc(run.ds.num_classes)  # files: from their labels
        run.results["synthetic"] = {"source": syn.meta.get("source", syn.meta.get("method", "file")),
                                    "images": int(syn.images.shape[0]), "ipc": ipc,
                                    "distill_s": syn.meta.get("distill_s"), "cached": syn.meta.get("cached", False),
                                    "lr": syn.lr}

    def inner(self, run, model, rewind, mask, r):
        run.start_stage("inner")
        out, acc = run.train_synthetic(model, rewind, mask, self.syn, r - 1)
        return Inner.of(out, acc)

    def prune(self, run, model, mask, r, kw):
        return magnitude_prune(model, mask, **kw)

    def divergence(self, run):
        sc = run.cfg.synthetic
        learned = (run.results.get("synthetic") or {}).get("lr")
        if sc.use_learned_lr and learned:
            return learned, "the set's learned lr (or synthetic.use_learned_lr = false)", "on the synthetic set"
        return sc.lr, "synthetic.lr", "on the synthetic set"
