"""Pruning at initialisation: SNIP, GraSP and SynFlow score the initial weights once per round's target.

Each round's mask is one scoring of the initialisation to that round's sparsity, not the sum of the rounds
before, so its time-to-mask is the rewind point's cost plus that one scoring. SNIP and GraSP score on the same
fixed real batches every round (drawn once per run)."""

from __future__ import annotations

from ..masks import full_mask
from ..training import derive_seed, restore
from .base import PruningMethod


class PruneAtInit(PruningMethod):
    uses_batches = True

    def __init__(self):
        self.batches = None

    @classmethod
    def identity(cls, cfg, synthetic):
        return {"prune": {k: getattr(cfg.prune, k) for k in cls.prune_keys}}

    def prune(self, run, model, mask, r, kw):
        from ..pruning_at_init import one_shot_prune, real_batches

        p = run.cfg.prune
        restore(model, run.init)
        if self.uses_batches and self.batches is None:
            self.batches = real_batches(run.ds, batches=p.score_batches, batch_size=p.score_batch_size,
                                        seed=derive_seed(run.seed, "score"), device=run.device)
        return one_shot_prune(self.name, model, full_mask(model), self.batches, iterations=p.synflow_iterations,
                              temperature=p.grasp_temperature, input_shape=tuple(run.ds.shape), **kw)

    def time_to_mask(self, before, inner, prune_s, rewind_s):
        return rewind_s + prune_s


class SNIP(PruneAtInit):
    name = "snip"
    prune_keys = ("score_batches", "score_batch_size")


class GraSP(PruneAtInit):
    name = "grasp"
    prune_keys = ("score_batches", "score_batch_size", "grasp_temperature")


class SynFlow(PruneAtInit):
    name = "synflow"
    prune_keys = ("synflow_iterations",)
    uses_batches = False
