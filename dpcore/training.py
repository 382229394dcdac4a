"""Training and evaluation on whole-tensor datasets: one hot loop, no per-sample Python, no host syncs.

Data order and augmentation come from explicit generators on the run's device, seeded per training, so a
training is a pure function of (start state, mask, data, schedule, seed, fast path) on the CPU. Inside the
per-step loops nothing waits for the device: batches are gathered, augmented and trained on the device,
losses stay there, and :func:`evaluate` reads its two sums once at the end.

How the loop runs (not what it computes) is a :class:`FastPath`: autocast precision, channels-last
memory format, ``torch.compile`` of the step's forward/backward, and on CUDA always TF32 matmuls and
convolutions and ``cudnn.benchmark``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
import types
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .graphed import can_graph, train_graphed
from .masks import Mask, MaskApplier

Augment = Callable[[Tensor, torch.Generator], Tensor]  # (batch, generator on the batch's device) -> batch
EpochCallback = Callable[[int, int, Tensor], None]  # (epochs done, total epochs, last batch loss)

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "on", "off")
# compile = "auto" compiles the training step on the CPU for the nets where it was measured to pay (2 CPU
# cores: benchmarks/speed.py, and forward+backward timings of the other models), for trainings of at least
# AUTO_COMPILE_MIN_SAMPLES sample-steps (steps x batch). The gain is inductor fusing the layers whose eager
# CPU kernels are slow, GroupNorm (instance norm) and AvgPool: ConvNet-32 ~2.5x the images/s, ConvNet-128
# ~1.8x, ConvNet without norm ~2.3x. Nets of convolutions, ReLU, max-pooling and BatchNorm gain nothing or
# lose (AlexNet 0.96x, VGG-11 0.95x, Conv-4 0.96x, ConvNet with BatchNorm 0.8x, ResNet-18 1.06x), and an MLP's
# time is in matrix products (LeNet 0.75x). Compiling costs ~10-30 s per architecture the first time on a
# machine (~1-3 s with inductor's on-disk cache; later trainings of the same architecture in a process reuse
# the graphs): it pays after a few hundred steps at worst.
#
# On CUDA (reasoned, not yet measured: benchmarks/gpu_check.sh measures it), "auto" compiles when triton is
# there, for every conv net whose training has at least AUTO_COMPILE_MIN_SAMPLES_CUDA sample-steps. A small net's
# step on an H100 is a few dozen short kernels, so launches bound it and inductor's fused kernels (norms,
# activations, pooling) pay; compiling costs ~30-60 s per architecture and process the first time, reused by every
# later training of that architecture (each round), so it pays over a long training, not a short one. The
# synthetic inner loop is not compiled by "auto": it runs as whole-step CUDA graphs (dpcore/graphed.py), which
# remove the launches, and a round's loop (a few hundred steps, ~0.1-0.5 s) would not win back a compile.
AUTO_COMPILE_MIN_SAMPLES = 20_000
AUTO_COMPILE_MIN_SAMPLES_CUDA = 200_000  # ~4 epochs of CIFAR-10
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Stopped(Exception):
    """Raised inside a training when the stop flag is set."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs and machines."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` (so drawing from it never copies or syncs), seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer, cloned (a rewind point)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    model.load_state_dict(state, strict=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time with the device synchronised at start and stop."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------ fast path
def compile_pays_on_cpu(model: nn.Module) -> bool:
    """A conv net with GroupNorm/InstanceNorm or average pooling and no BatchNorm (see the measurements above)."""
    kinds = [type(m) for m in model.modules()]
    has = lambda *types_: any(issubclass(k, types_) for k in kinds)  # noqa: E731
    return (has(nn.modules.conv._ConvNd) and not has(nn.modules.batchnorm._BatchNorm)
            and has(nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.AvgPool2d, nn.AvgPool1d))


def compiler_available(device: torch.device) -> bool:
    """Whether torch.compile's default backend can build code for ``device`` here."""
    if device.type == "cpu":
        return any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover - very old torch
            return False
        return has_triton()
    return False


@dataclass(frozen=True)
class FastPath:
    """How the hot loop runs; every setting keeps what it computes (up to float rounding), and masked
    weights stay exactly zero under all of them.

    * ``precision``: ``"fp32"``, or autocast to ``"bf16"`` / ``"fp16"`` (fp16 scales the loss with a
      ``GradScaler``; the weights and optimiser state stay fp32).
    * ``channels_last``: the model's 4-D weights and the input batches in channels-last memory format.
    * ``compile``: ``"on"`` runs each full training batch's forward and backward (model + loss) through
      ``torch.compile`` (a short last batch runs eagerly, so there is one graph per shape); ``"auto"`` does
      so on the CPU for the nets it pays for (:func:`compile_pays_on_cpu`: the ConvNet family) trained for
      at least :data:`AUTO_COMPILE_MIN_SAMPLES` sample-steps;
      ``"off"`` never. The warm-up steps' extra time is :attr:`TrainOutcome.compile_s`, apart from ``train_s``.
    * ``cuda_graphs``: on a CUDA device, each whole step (batch, augmentation, forward, backward, optimiser,
      mask) recorded once as a CUDA graph and replayed (:mod:`dpcore.graphed`); for fixed-shape loops (the
      synthetic inner loop). Not with fp16 (its scaler steps on the host's decision), a capture step or lr warm-up.

    On CUDA, TF32 matmuls/convolutions and ``cudnn.benchmark`` are always on (:func:`use_cuda_fast_math`).
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile {self.compile!r} is not allowed; choose one of: {', '.join(COMPILE_MODES)}")

    @classmethod
    def of(cls, run_config: object) -> "FastPath":
        """The fast path a ``[run]`` section (:class:`dpcore.config.RunConfig`) asks for."""
        return cls(precision=getattr(run_config, "precision", "fp32"),
                   channels_last=bool(getattr(run_config, "channels_last", False)),
                   compile=getattr(run_config, "compile", "off"))

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _AMP_DTYPES.get(self.precision)

    def autocast(self, device: torch.device, cache: bool = True):
        """Autocast to the precision's dtype (none for fp32). ``cache=False`` for a step recorded as a CUDA graph:
        a cached cast of a weight would be a tensor the recording outlives."""
        dtype = self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)

    def compiles(self, model: nn.Module, device: torch.device, sample_steps: int) -> bool:
        """Whether a training of ``sample_steps`` (steps x batch) on ``device`` compiles its step."""
        if self.compile == "off":
            return False
        if self.compile == "on":
            return True
        if device.type == "cuda":
            if not compiler_available(device):
                return False
            is_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
            return is_conv and sample_steps >= AUTO_COMPILE_MIN_SAMPLES_CUDA
        return (device.type == "cpu" and sample_steps >= AUTO_COMPILE_MIN_SAMPLES and compile_pays_on_cpu(model)
                and compiler_available(device))


def use_cuda_fast_math(device: torch.device) -> None:
    """On a CUDA device: TF32 matmuls and convolutions, and ``cudnn.benchmark`` (autotuned convolution
    algorithms), for the whole process. Every training and evaluation on CUDA calls it, so they all run
    alike; it is not undone afterwards, as runs on other threads may be training at the same time."""
    if device.type == "cuda":
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the per-backend precision API
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:  # older torch: the flags that API replaces
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def use_memory_format(model: nn.Module, channels_last: bool) -> None:
    """Put the model's 4-D parameters in channels-last format, once: a model already in it is left alone, and it
    is never converted back, so its parameters keep their storage from round to round (a CUDA graph recorded on
    them stays valid) and the masks, made in each parameter's format, match it."""
    if channels_last and any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)
                             for p in model.parameters()):
        model.to(memory_format=torch.channels_last)


def _as_input(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


@dataclass
class _Compiled:
    """``torch.compile`` of ``fn`` (falls back to eager for good, with a warning, if compiling fails)."""

    fn: Callable
    mode: str | None = None
    compiled: Callable | None = None
    error: str | None = None  # why compiling failed: the step then runs eagerly for the rest of the process

    @property
    def broken(self) -> bool:
        return self.error is not None

    def __call__(self, *args):
        if self.broken:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False, mode=self.mode)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - no C++ compiler / triton, an unsupported op: run eagerly
            first = str(err).splitlines()[0] if str(err) else ""
            self.error = f"{type(err).__name__}: {first}"
            warnings.warn(f"torch.compile failed ({self.error}); running eagerly", RuntimeWarning, stacklevel=3)
            return self.fn(*args)


_COMPILED: dict[tuple, _Compiled] = {}


def compiled_step(fn: Callable, model: nn.Module, mode: str | None = None) -> _Compiled:
    """The process's compiled ``fn`` for ``model``'s architecture: every model built alike shares its graphs
    (parameters are graph inputs). Each architecture gets its own copy of ``fn`` (own code object), so
    dynamo's per-function recompile limit (8 graphs) counts per architecture, not for the whole process
    (past the limit dynamo would quietly run eagerly)."""
    key = (fn.__name__, mode, type(model).__qualname__, repr(model))
    step = _COMPILED.get(key)
    if step is None:
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                  fn.__closure__)
        step = _COMPILED[key] = _Compiled(copy, mode)
    return step


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class Schedule:
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0  # the lr rises linearly over these first steps (Goyal et al.; Frankle et al. 2020)

    def lr_at(self, epoch: int, step: int | None = None) -> float:
        """The lr of ``epoch`` (milestones), scaled by the warm-up at global ``step`` (0-based) when given."""
        lr = self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if step is not None and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def make_optimizer(self, params, *, lr: float | Tensor | None = None,
                       capturable: bool = False) -> torch.optim.Optimizer:
        """Adam or SGD; the fused (one kernel for all parameters, no host syncs even with a GradScaler)
        implementation where torch has one for the parameters' device. ``lr``: instead of the schedule's (a
        tensor for a CUDA graph to read); ``capturable``: Adam keeps its step count on the device, as a graph
        recording its step needs (SGD's fused step always can be)."""
        params = list(params)
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        extra = {"fused": True} if fused else {}
        lr = self.lr if lr is None else lr
        if self.optimizer == "adam":
            if capturable:
                extra["capturable"] = True
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, **extra)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay, **extra)


@dataclass
class TrainOutcome:
    train_s: float  # training wall time, without compile_s
    steps: int
    capture: dict[str, Tensor] | None = None  # state at capture_step, if asked for
    capture_s: float | None = None  # training time spent before the capture (without compile_s)
    compile_s: float = 0.0  # warm-up of a compiled step: its first steps' time beyond the steady per-step time
    compiled: bool = False  # whether the step ran compiled (False after a fallback to eager)
    fallback: str | None = None  # compiling was asked for but failed (the error): the steps ran eagerly
    graphed: bool | None = None  # None: no CUDA graphs asked for; True: every step replayed one; False: fell back
    graph_fallback: str | None = None  # why capturing a CUDA graph failed (the rest of the steps ran eagerly)


class _WarmUp:
    """Times the first steps of a compiled training apart (one device sync after each, at most ``n``)."""

    def __init__(self, device: torch.device, n: int):
        self.device, self.left, self.done, self.times = device, n, 0, []
        self.last = time.perf_counter()

    def step(self) -> None:
        if self.left:
            synchronize(self.device)
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now
            self.left -= 1

    def split(self, total_s: float, steps: int) -> tuple[float, float]:
        """(compile_s, steady per-step time): the warm-up's time beyond ``len(times)`` steady steps."""
        if not self.times:
            return 0.0, (total_s / steps if steps else 0.0)
        warm_s = sum(self.times)
        rest = steps - len(self.times)
        steady = (total_s - warm_s) / rest if rest > 0 else min(self.times)
        return max(0.0, warm_s - len(self.times) * steady), steady


def train(model: nn.Module, x: Tensor, y: Tensor, *, schedule: Schedule, seed: int,
          prepare: Callable[[Tensor], Tensor] = lambda t: t, mask: Mask | None = None,
          augment: Augment | None = None, start_step: int = 0, capture_step: int | None = None,
          on_epoch: EpochCallback | None = None, should_stop: Callable[[], bool] | None = None,
          fast: FastPath | None = None) -> TrainOutcome:
    """Train ``model`` in place from global step ``start_step`` to the end of the schedule.

    Epoch ``e`` always uses the permutation drawn from ``(seed, e)`` on the data's device, so starting at
    a rewind step continues the same data order. Masked weights are zeroed after every step. ``augment``
    gets each prepared batch and a generator on its device seeded by ``(seed, start_step)``.
    """
    fast = fast or FastPath()
    device = next(model.parameters()).device
    n = x.shape[0]
    batch = min(schedule.batch_size, n)
    per_epoch = (n + batch - 1) // batch
    remaining = max(0, schedule.epochs * per_epoch - start_step)
    compiled = fast.compiles(model, device, remaining * batch)
    if can_graph(fast, device, schedule, capture_step):
        return train_graphed(model, x, y, schedule=schedule, seed=seed, prepare=prepare, mask=mask, augment=augment,
                             start_step=start_step, on_epoch=on_epoch, should_stop=should_stop, fast=fast,
                             compiled=compiled)
    loss_fn = compiled_step(_loss, model) if compiled else _loss
    scaler = torch.amp.GradScaler(device.type) if fast.precision == "fp16" else None
    use_cuda_fast_math(device)
    use_memory_format(model, fast.channels_last)
    apply_mask = MaskApplier(model, mask) if mask is not None else None
    if apply_mask:
        apply_mask()
    opt = schedule.make_optimizer(model.parameters())
    aug_gen = device_generator(x.device, derive_seed(seed, "augment", start_step))
    model.train()
    capture = None
    capture_at = None  # (steps done, raw elapsed s) at the capture
    watch = Stopwatch(device)
    warm = _WarmUp(device, 2 if compiled else 0)
    step = start_step
    if capture_step is not None and capture_step == start_step:
        capture, capture_at = snapshot(model), (0, 0.0)
    last = None
    for epoch in range(start_step // per_epoch, schedule.epochs):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        order = torch.randperm(n, generator=device_generator(x.device, derive_seed(seed, "epoch", epoch)),
                               device=x.device)
        for b in range(step - epoch * per_epoch, per_epoch):
            if should_stop is not None and should_stop():
                raise Stopped
            if step <= schedule.warmup_steps:  # inside the warm-up, and the first step after it
                for group in opt.param_groups:
                    group["lr"] = schedule.lr_at(epoch, step)
            idx = order[b * batch: (b + 1) * batch]
            xb = prepare(x[idx])
            if augment is not None:
                xb = augment(xb, aug_gen)
            xb, yb = _as_input(xb, fast.channels_last), y[idx]
            opt.zero_grad(set_to_none=True)
            with fast.autocast(device):
                loss = (loss_fn if xb.shape[0] == batch else _loss)(model, xb, yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if apply_mask:
                apply_mask()
            step += 1
            warm.step()
            if b == per_epoch - 1:
                last = loss.detach()
            if capture_step is not None and step == capture_step:
                capture, capture_at = snapshot(model), (step - start_step, watch.elapsed())
        if on_epoch is not None and last is not None:
            on_epoch(epoch + 1, schedule.epochs, last)
            last = None
    total = watch.elapsed()
    compile_s, steady = warm.split(total, step - start_step)
    capture_s = None
    if capture_at is not None:
        done, raw = capture_at
        capture_s = done * steady if done <= len(warm.times) else max(0.0, raw - compile_s)
    fallback = loss_fn.error if isinstance(loss_fn, _Compiled) else None
    return TrainOutcome(train_s=total - compile_s, steps=step, capture=capture, capture_s=capture_s,
                        compile_s=compile_s, compiled=compiled and fallback is None, fallback=fallback)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, prepare: Callable[[Tensor], Tensor] = lambda t: t,
             batch_size: int = 2048, fast: FastPath | None = None) -> tuple[float, float]:
    """(accuracy as a fraction, mean cross-entropy) over the whole split.

    Sums stay on the device and are read once at the end. ``fast``: precision and channels-last as in
    training; its forward is compiled only with ``compile = "on"`` (a few large batches: "auto" does not).
    """
    fast = fast or FastPath()
    device = y.device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float32, device=device)
    n = x.shape[0]
    full = min(batch_size, n)
    forward = compiled_step(_logits, model) if fast.compile == "on" else _logits
    use_cuda_fast_math(device)
    use_memory_format(model, fast.channels_last)
    for i in range(0, n, batch_size):
        xb = _as_input(prepare(x[i: i + batch_size]), fast.channels_last)
        yb = y[i: i + batch_size]
        with fast.autocast(device):
            logits = (forward if xb.shape[0] == full else _logits)(model, xb)
        logits = logits.float()
        correct += (logits.argmax(1) == yb).sum()
        loss += F.cross_entropy(logits, yb, reduction="sum")
    model.train(was_training)
    acc_sum, loss_sum = torch.stack([correct.double(), loss.double()]).tolist()  # the one read
    return acc_sum / n, loss_sum / n


def steps_per_epoch(n: int, batch_size: int) -> int:
    batch = min(batch_size, n)
    return (n + batch - 1) // batch
