"""The machine's load for the dashboard's header: CPU busy share and memory; on each GPU its utilisation and
memory, from NVML when ``nvidia-ml-py`` is installed, else memory only, from torch. Plain Python (no Textual);
the app samples it from a worker thread every few seconds, so reading it never blocks the UI."""

from __future__ import annotations

import os
from pathlib import Path

GIB = 2**30


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None where there is no /proc)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _memory() -> tuple[float, float] | None:
    """(used, total) bytes of RAM, from /proc/meminfo (used = total - available)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return total - available, total


class LoadProbe:
    """Call it for the header's line, e.g. ``cpu 63% · mem 5.1/23.4 GiB · gpu0 87% 12.3/79.6 GiB``. The CPU share
    is over the time since the previous call (the first call: since boot)."""

    def __init__(self, gpus: int = 0):
        self.gpus = gpus
        self.last = None
        self.nvml = None
        if gpus:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
            except Exception:  # noqa: BLE001 - no NVML (library or driver): GPU memory from torch instead
                self.nvml = None

    def __call__(self) -> str:
        parts = []
        times = _cpu_times()
        if times is not None:
            busy, total = times
            if self.last is not None and total > self.last[1]:
                share = (busy - self.last[0]) / (total - self.last[1])
            else:
                share = busy / total if total else 0.0
            self.last = times
            parts.append(f"cpu {100 * share:.0f}% of {os.cpu_count()}")
        mem = _memory()
        if mem is not None:
            parts.append(f"mem {mem[0] / GIB:.1f}/{mem[1] / GIB:.1f} GiB")
        parts += [self.gpu(i) for i in range(self.gpus)]
        return " · ".join(parts)

    def gpu(self, i: int) -> str:
        if self.nvml is not None:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                return f"gpu{i} {util}% {mem.used / GIB:.1f}/{mem.total / GIB:.1f} GiB"
            except Exception:  # noqa: BLE001 - a GPU NVML cannot read: fall back to torch below
                pass
        try:
            import torch

            free, total = torch.cuda.mem_get_info(i)
            return f"gpu{i} {(total - free) / GIB:.1f}/{total / GIB:.1f} GiB (utilisation: install nvidia-ml-py)"
        except Exception:  # noqa: BLE001 - no CUDA runtime after all: say so rather than fail the header
            return f"gpu{i} unreadable"
