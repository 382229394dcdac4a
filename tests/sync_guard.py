"""Find host syncs on the CPU: record every call that would make the host wait for a GPU.

On a GPU these calls (``item``, ``float(t)``, ``bool(t)``, ``tolist``, copies to the host, ops whose
output size depends on the data such as ``nonzero``) stall the CPU until every queued kernel has run;
inside a training step they serialise the host and the device. On the CPU they cost nothing, so they
cannot be timed here: they are counted instead, through a ``TorchFunctionMode``.

Use :func:`per_step_syncs`: run the same loop with ``n`` and ``2 * n`` steps; a loop without
per-step syncs records the same calls for both (its set-up and one final read may sync, once).

Calls made inside ``torch.optim`` are not counted: without ``capturable`` torch keeps the optimisers'
step counters on the host on every device, so reading them is not a device sync.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

SYNCING = {"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "cpu", "numpy", "nonzero",
           "unique", "masked_select", "argwhere", "repeat_interleave", "bincount"}


def _to_host(args, kwargs) -> bool:
    """``t.to(...)`` / ``t.to(device=...)`` naming the CPU."""
    targets = list(args[1:]) + [kwargs.get("device")]
    return any((isinstance(a, str) and a.startswith("cpu")) or (isinstance(a, torch.device) and a.type == "cpu")
               for a in targets)


def _in_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "torch/optim/" in name or "torch\\optim\\" in name:
            return True
        frame = frame.f_back
    return False


class SyncRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "repeat_interleave" and not (len(args) > 1 and isinstance(args[1], torch.Tensor)) \
                and "output_size" not in kwargs:
            pass  # repeat_interleave(x, int) has a static size
        elif (name in SYNCING or (name == "to" and _to_host(args, kwargs))) and not _in_optimizer():
            self.calls[name] += 1
        return func(*args, **kwargs)


def record_syncs(fn: Callable[[], object]) -> Counter[str]:
    with SyncRecorder() as rec:
        fn()
    return rec.calls


def per_step_syncs(run: Callable[[int], object], n: int) -> Counter[str]:
    """The calls that ``run(2 * n)`` makes more often than ``run(n)``: the syncs inside the loop."""
    once, twice = record_syncs(lambda: run(n)), record_syncs(lambda: run(2 * n))
    return Counter({k: twice[k] - once[k] for k in twice if twice[k] > once[k]})
