"""How many runs share one machine at once (``run.jobs``), and how many CPU threads each of them gets.

On a CPU, small nets do not use many cores well: measured on a 2-core box (LeNet-300-100, 6 epochs on 10k
images), two processes of one thread each gave about 2.3x the throughput of one process of two threads; the whole
quick start took 142 s two at once against 221 s one at a time with two threads (1.55x) and 241 s one at a time
with one thread (1.69x). So ``auto`` gives each run ``run.threads`` threads (1 when unset) and runs
``cores // threads`` at once.

On a GPU, a run of a small net is launch-bound (a LeNet or ConvNet step is a few dozen short kernels), so one
run leaves most of an H100 idle; ``auto`` packs :data:`RUNS_PER_GPU` runs on each GPU, each with its own CUDA
context (about 0.5 GiB) and its own copy of the data (CIFAR-10 as float32 is 0.7 GiB): far from filling 80 GiB.
``benchmarks/gpu_check.sh`` measures 4 runs sharing one GPU against one at a time.

A run's results depend on its thread count on a CPU (float sums in another order), so the count is recorded in
each run's results (``threads``) and is part of its identity only when ``run.threads`` sets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

THREADS_ENV = "DPTUI_THREADS_PER_RUN"  # set by a parent that splits the cores (the dashboard's queue runner)
RUNS_PER_GPU = 4


def cpu_count() -> int:
    """The cores this process may use (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Capacity:
    """``jobs`` runs at once, each with ``threads`` torch threads (CPU) on ``devices`` (GPU indices, or [])."""

    jobs: int
    threads: int
    devices: tuple[int, ...] = ()

    def line(self) -> str:
        where = f"on GPU {', '.join(map(str, self.devices))}" if self.devices else "on the CPU"
        return f"{self.jobs} run{'s' if self.jobs != 1 else ''} at once {where}, {self.threads} thread" \
               f"{'s' if self.threads != 1 else ''} each"


def capacity(device_type: str, jobs: int, threads: int, *, gpus: int = 0, runs: int | None = None) -> Capacity:
    """How ``runs`` runs (None: unbounded) share this machine.

    ``jobs``: ``run.jobs`` (0 = auto); ``threads``: ``run.threads`` (0 = split the cores between the jobs);
    ``gpus``: the CUDA devices visible (for ``device_type == "cuda"``)."""
    cores = cpu_count()
    if device_type == "cuda":
        gpus = max(1, gpus)
        n = jobs or RUNS_PER_GPU * gpus
        devices = tuple(range(gpus))
    else:
        n = jobs or max(1, cores // (threads or 1))
        devices = ()
    if runs is not None:
        n = max(1, min(n, runs))
    per = threads or max(1, cores // n)
    return Capacity(n, per, devices)


def threads_from_env() -> int:
    """The thread count a parent process split off for this run (``DPTUI_THREADS_PER_RUN``), else 0."""
    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


def set_threads(threads: int) -> None:
    """Give this process's torch ``threads`` intra-op threads (0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def peak_memory_mb(device_type: str) -> float:
    """This process's peak memory so far: CUDA memory allocated on a GPU, else its peak resident set (MiB)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
