"""Iterative Magnitude Pruning: train the mask on real data, cut the smallest weights, rewind."""

from __future__ import annotations

from ..masks import magnitude_prune
from ..training import restore, snapshot
from .base import Inner, PruningMethod


class IMP(PruningMethod):
    """IMP's validation of m_r and its inner training in round r+1 are the same computation (same start,
    mask, data and seed), so it runs once and its time counts in both places (``pending``)."""

    name = "imp"
    trains_on = "real"

    def __init__(self):
        self.pending: tuple[int, dict, float, float] | None = None  # (round, trained weights, acc, seconds)

    def prepare(self, run) -> None:
        if run.rewind_step == 0:  # the dense net trained from init is round 1's inner training
            dense = run.dense
            self.pending = (0, dense["trained"], dense["test_acc"], dense["train_s"])

    def inner(self, run, model, rewind, mask, r):
        if self.pending and self.pending[0] == r - 1:
            _, trained, acc, train_s = self.pending
            restore(model, trained)
            return Inner(train_s, acc)
        run.start_stage("inner")
        out, acc = run.train_real(model, rewind, mask, r - 1, start_step=run.rewind_step)
        return Inner.of(out, acc)

    def prune(self, run, model, mask, r, kw):
        return magnitude_prune(model, mask, **kw)

    def validated(self, run, r, model, acc, train_s) -> None:
        self.pending = (r, snapshot(model), acc, train_s)
