"""Pruning methods as strategies: what each trains on per round, how it scores, what its identity adds.

A method is a small class deriving :class:`~dpcore.methods.base.PruningMethod`, registered under its name with
:func:`register`; the engine's round loop calls the same hooks for every method and never branches on a name.
A new method is one module plus one line here (or a ``register`` call in the user's own code).
"""

from __future__ import annotations

from .base import Inner, PruningMethod, get_method, method_names, prune_keys, register
from .imp import IMP
from .distilled import Distilled
from .random import RandomPruning
from .at_init import GraSP, SNIP, SynFlow

for _cls in (IMP, Distilled, RandomPruning, SNIP, GraSP, SynFlow):
    register(_cls)

__all__ = ["Inner", "PruningMethod", "get_method", "method_names", "prune_keys", "register"]
