"""Claims: no two processes ever do the same work in one run store.

A claim is an exclusive ``flock`` on a file under ``<runs>/claims/`` (one per run id, one per shared cache entry:
a dense baseline, a synthetic set, MTT's expert trajectories). The kernel drops it when its process exits, so
a crashed or killed process releases what it held and another one resumes the work. The holder writes who it
is (pid, host, since when) into the file, so a process that finds the claim taken can say which process has it.

Executors take the claims of runs; the engine takes those of the shared stages it makes. A process that finds
a run claimed runs the others first and comes back to it, waiting until it is released (then it reads the
finished run, or resumes it if the other process died).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CLAIMS = "claims"


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: float

    def line(self) -> str:
        here = socket.gethostname()
        where = "" if self.host == here else f" on {self.host}"
        return f"process {self.pid}{where} since {time.strftime('%H:%M:%S', time.localtime(self.since))}"


def claim_path(runs_dir: str | Path, kind: str, key: str) -> Path:
    return Path(runs_dir) / CLAIMS / f"{kind}-{key}.lock"


class Claim:
    """An exclusive claim on ``path``; a context manager that waits for it (``on_wait`` is told who holds it)."""

    def __init__(self, path: str | Path, on_wait: Callable[[Holder | None], None] | None = None):
        self.path = Path(path)
        self.on_wait = on_wait
        self.fh = None

    def _lock(self, wait: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        fh.flush()
        self.fh = fh
        return True

    def try_acquire(self) -> bool:
        """Take the claim if it is free; False (at once) when another process holds it."""
        return self.fh is not None or self._lock(wait=False)

    def acquire(self) -> None:
        """Take the claim, waiting while another process holds it (``on_wait`` is called once, first)."""
        if self.try_acquire():
            return
        if self.on_wait is not None:
            self.on_wait(holder(self.path))
        self._lock(wait=True)

    def release(self) -> None:
        if self.fh is not None:
            fh, self.fh = self.fh, None
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @property
    def held(self) -> bool:
        return self.fh is not None

    def __enter__(self) -> "Claim":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: str | Path) -> Holder | None:
    """Who holds the claim at ``path`` (as it wrote itself down), or None when unknown."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
        return Holder(int(data["pid"]), str(data.get("host", "")), float(data.get("since", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
