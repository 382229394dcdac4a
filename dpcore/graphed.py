"""A fixed-shape training loop whose every step is one CUDA graph replay.

The synthetic inner loop is tiny (about a hundred images, one step per epoch, hundreds of epochs), so on a GPU
its time is kernel launches and host work, not arithmetic. Here the whole step - gather the batch, augment,
forward, backward, optimiser, mask, keep the loss - is recorded once and replayed:

* the data order of every epoch is drawn before the first step (the same permutations :func:`train` draws
  epoch by epoch) into one ``[steps, batch]`` table on the device; a step reads its row through a counter that
  lives on the device and that the step itself advances (one table and counter per batch size);
* augmentation draws its parameters inside the graph from the training's generator, registered with each
  graph (its philox offset advances on every replay); a DSA op is picked on the host from the same seeded host
  RNG as :func:`train`, so there is one graph per (op, batch size);
* the learning rate is a tensor on the device that the optimiser reads, written at milestones only.

Each key's first step runs eagerly on a side stream (the warm-up: optimiser state, cuDNN autotuning, compiled
kernels); its second is captured, then replayed from there on. If capturing fails, the rest of the training
runs eagerly and the outcome's ``graph_fallback`` says why: it is never silent.

The same step runs eagerly on any device (``graphs=False``): on the CPU it computes exactly what
:func:`dpcore.training.train` computes, which is how the tests check the step the GPU replays.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from .masks import Mask, MaskApplier

if TYPE_CHECKING:  # pragma: no cover
    from .training import Augment, EpochCallback, FastPath, Schedule, TrainOutcome


def can_graph(fast: "FastPath", device: torch.device, schedule: "Schedule", capture_step: int | None) -> bool:
    """Whether :func:`train` runs a training as CUDA graphs: asked for (``fast.cuda_graphs``), on CUDA, with no
    per-step lr warm-up and no mid-training capture (both host work at given steps), and not fp16 (its gradient
    scaler decides on the host whether to step)."""
    return (fast.cuda_graphs and device.type == "cuda" and fast.precision != "fp16"
            and schedule.warmup_steps == 0 and capture_step is None)


def order_tables(n: int, batch: int, epochs: int, start_step: int, seed: int, device: torch.device
                 ) -> tuple[list[tuple[int, int, int]], dict[int, Tensor]]:
    """The steps from ``start_step`` to the end, as ``[(epoch, batch size, last of epoch)]``, and per batch size
    the ``[steps, size]`` table of the rows each of its steps reads, in order: epoch ``e``'s permutation is the one
    :func:`dpcore.training.train` draws from ``(seed, "epoch", e)``."""
    from .training import derive_seed, device_generator

    per_epoch = (n + batch - 1) // batch
    steps: list[tuple[int, int, int]] = []
    rows: dict[int, list[Tensor]] = {}
    for epoch in range(start_step // per_epoch, epochs):
        order = torch.randperm(n, generator=device_generator(device, derive_seed(seed, "epoch", epoch)),
                               device=device)
        for b in range(max(0, start_step - epoch * per_epoch), per_epoch):
            idx = order[b * batch: (b + 1) * batch]
            rows.setdefault(idx.numel(), []).append(idx)
            steps.append((epoch, idx.numel(), int(b == per_epoch - 1)))
    return steps, {size: torch.stack(r) for size, r in rows.items()}


class _Setup:
    """The time of the steps that warm up or capture a graph (each timed with the device synchronised), kept
    apart from the steady steps, as :class:`dpcore.training.TrainOutcome.compile_s`."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.steps = device, 0.0, 0

    def timed(self, fn: Callable[[], None]) -> None:
        from .training import synchronize

        synchronize(self.device)
        t0 = time.perf_counter()
        fn()
        synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.steps += 1

    def split(self, total_s: float, steps: int) -> float:
        """The setup's time beyond what its steps would have taken at the steady per-step time."""
        if not self.steps:
            return 0.0
        rest = steps - self.steps
        steady = (total_s - self.seconds) / rest if rest > 0 else 0.0
        return max(0.0, self.seconds - self.steps * steady)


class GraphedLoop:
    """The step of one training, run eagerly or recorded and replayed as one CUDA graph per key."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, tables: dict[int, Tensor], *,
                 schedule: "Schedule", fast: "FastPath", loss_fn: Callable, prepare: Callable[[Tensor], Tensor],
                 mask: Mask | None, augment: "Augment | None", aug_gen: torch.Generator, graphs: bool):
        from .training import _as_input

        self.model, self.x, self.y, self.tables, self.fast = model, x, y, tables, fast
        self.loss_fn, self.prepare, self.augment, self.aug_gen = loss_fn, prepare, augment, aug_gen
        self.as_input = lambda t: _as_input(t, fast.channels_last)
        self.device = next(model.parameters()).device
        self.counters = {size: torch.zeros(1, dtype=torch.long, device=x.device) for size in tables}
        self.apply_mask = MaskApplier(model, mask) if mask is not None else None
        self.graphs = graphs
        # A graph reads the lr from this tensor (a float would be baked into the recording).
        lr: float | Tensor = torch.tensor(schedule.lr, device=self.device) if graphs else schedule.lr
        self.opt = schedule.make_optimizer(model.parameters(), lr=lr, capturable=graphs)
        self.last_loss = torch.zeros((), device=self.device)
        self.seen: dict[tuple, torch.cuda.CUDAGraph | None] = {}
        self.error: str | None = None

    def set_lr(self, value: float) -> None:
        for group in self.opt.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(value)  # a kernel, no sync: the graphs read it
            else:
                group["lr"] = value

    def next_op(self) -> str | None:
        """The host's pick of this step's augmentation op (DSA), or None for an augmentation without one."""
        pick = getattr(self.augment, "next_op", None)
        return pick() if pick is not None else None

    def step(self, size: int, op: str | None) -> None:
        """One training step on the next row of ``size``'s table; every tensor it touches stays on the device."""
        idx = self.tables[size].index_select(0, self.counters[size]).squeeze(0)
        self.counters[size].add_(1)
        xb = self.prepare(self.x.index_select(0, idx))
        if self.augment is not None:
            apply = getattr(self.augment, "apply", None)
            xb = apply(xb, op, self.aug_gen) if apply is not None else self.augment(xb, self.aug_gen)
        xb, yb = self.as_input(xb), self.y.index_select(0, idx)
        self.opt.zero_grad(set_to_none=True)
        with self.fast.autocast(self.device, cache=not self.graphs):
            loss = self.loss_fn(self.model, xb, yb)
        loss.backward()
        self.opt.step()
        if self.apply_mask:
            self.apply_mask()
        self.last_loss.copy_(loss.detach())

    def run(self, size: int, op: str | None, setup: _Setup) -> None:
        """Step once: eagerly (no graphs, a key's first step, or after a failed capture), else by replay."""
        key = (size, op)
        if not self.graphs or self.error is not None:
            self.step(size, op)
        elif key not in self.seen:
            self.seen[key] = None
            setup.timed(lambda: self._on_side_stream(size, op))
        elif self.seen[key] is None:
            setup.timed(lambda: self._capture_and_replay(key))
        else:
            self.seen[key].replay()

    def _on_side_stream(self, size: int, op: str | None) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.step(size, op)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture_and_replay(self, key: tuple) -> None:
        from .training import synchronize

        graph = torch.cuda.CUDAGraph()
        try:
            graph.register_generator_state(self.aug_gen)
            self.opt.zero_grad(set_to_none=True)  # the gradients are allocated in the graph's own memory
            # its own capture stream and thread-local capture: other threads (experts at once) may use the GPU
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
                self.step(*key)
        except Exception as err:  # noqa: BLE001 - an op that cannot be captured: the rest runs eagerly, said so
            first = str(err).splitlines()[0] if str(err) else ""
            self.error = f"CUDA graph capture failed ({type(err).__name__}: {first}); running eagerly"
            synchronize(self.device)
            self.step(*key)
            return
        self.seen[key] = graph
        graph.replay()


def train_graphed(model: nn.Module, x: Tensor, y: Tensor, *, schedule: "Schedule", seed: int,
                  prepare: Callable[[Tensor], Tensor], mask: Mask | None, augment: "Augment | None",
                  start_step: int, on_epoch: "EpochCallback | None", should_stop: Callable[[], bool] | None,
                  fast: "FastPath", compiled: bool, graphs: bool = True) -> "TrainOutcome":
    """:func:`dpcore.training.train` for a fixed-shape loop, each step one CUDA graph replay (``graphs=False``:
    the same steps eagerly). ``compiled``: the step's forward and backward run through ``torch.compile`` (its
    kernels are then what the graph records)."""
    from .training import (Stopped, Stopwatch, TrainOutcome, _Compiled, _loss, compiled_step, derive_seed, device_generator,
                           use_cuda_fast_math, use_memory_format)

    device = next(model.parameters()).device
    n = x.shape[0]
    batch = min(schedule.batch_size, n)
    watch = Stopwatch(device)  # drawing the epochs' orders up front is part of the training's time
    steps, tables = order_tables(n, batch, schedule.epochs, start_step, seed, x.device)
    loss_fn = compiled_step(_loss, model) if compiled else _loss
    use_cuda_fast_math(device)
    use_memory_format(model, fast.channels_last)
    aug_gen = device_generator(x.device, derive_seed(seed, "augment", start_step))
    loop = GraphedLoop(model, x, y, tables, schedule=schedule, fast=fast, loss_fn=loss_fn, prepare=prepare,
                       mask=mask, augment=augment, aug_gen=aug_gen, graphs=graphs)
    if loop.apply_mask:
        loop.apply_mask()
    model.train()
    setup = _Setup(device)
    epoch_now = None
    for epoch, size, last_of_epoch in steps:
        if should_stop is not None and should_stop():
            raise Stopped
        if epoch != epoch_now:
            loop.set_lr(schedule.lr_at(epoch))
            epoch_now = epoch
        loop.run(size, loop.next_op(), setup)
        if last_of_epoch and on_epoch is not None:
            on_epoch(epoch + 1, schedule.epochs, loop.last_loss.clone())  # the next step overwrites last_loss
    total = watch.elapsed()
    compile_s = setup.split(total, len(steps))
    compile_error = loss_fn.error if isinstance(loss_fn, _Compiled) else None
    return TrainOutcome(train_s=total - compile_s, steps=start_step + len(steps), compile_s=compile_s,
                        compiled=compiled and compile_error is None, fallback=compile_error,
                        graphed=(loop.error is None) if graphs else None, graph_fallback=loop.error)
