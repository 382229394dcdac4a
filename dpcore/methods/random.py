"""Random pruning: each round removes a random share of the surviving weights (no training)."""

from __future__ import annotations

import torch

from ..masks import output_layer_name, random_prune
from ..training import derive_seed
from .base import PruningMethod


class RandomPruning(PruningMethod):
    name = "random"

    def prune(self, run, model, mask, r, kw):
        gen = torch.Generator().manual_seed(derive_seed(run.seed, "random", r))
        cut = random_prune(mask, gen, output_name=output_layer_name(model), **kw)
        return {n: m.to(run.device) for n, m in cut.items()}
