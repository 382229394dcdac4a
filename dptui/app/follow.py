"""Reading the run store incrementally (plain Python; the app drives these from worker threads).

- :class:`EventFollower` tails one ``events.jsonl`` (append-only; the last line may be half written).
- :class:`RunFollower` folds a run's new events into a :class:`RunLive` and tails its process log.
- :class:`StoreScanner` lists the runs, re-reading a ``results.json`` only when it changed.
- :class:`Mailbox` coalesces updates: a burst of them costs the UI one message.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

from dpcore.events import Event, event_from_dict
from dpcore.results import ResultsError, RunResults
from dpcore.store import RUN_ID
from dptui.launches.logs import tail_lines

from .model import RunLive

READ_CHUNK = 1 << 20


class EventFollower:
    """Yields the complete new lines of an append-only JSON-lines file as typed events."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.partial = b""
        self.bad_lines = 0
        self._ino: int | None = None

    def read_new(self) -> list[Event]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if st.st_ino != self._ino or st.st_size < self.offset:  # replaced or truncated: start over
            self._ino, self.offset, self.partial = st.st_ino, 0, b""
        if st.st_size == self.offset:
            return []
        events: list[Event] = []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                self.offset += len(chunk)
                *lines, self.partial = (self.partial + chunk).split(b"\n")
                for line in lines:
                    ev = self._parse(line)
                    if ev is not None:
                        events.append(ev)
        return events

    def _parse(self, line: bytes) -> Event | None:
        if not line.strip():
            return None
        try:
            return event_from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return None


class RunFollower:
    """A run's events and process log, read incrementally by one worker at a time."""

    def __init__(self, run_dir: Path, run_id: str, log_path: Path | None = None):
        self.events = EventFollower(Path(run_dir) / "events.jsonl")
        self.live = RunLive(run_id)
        self.log_path = log_path
        self.log_tail: list[str] = []
        self._log_sig: tuple | None = None

    def poll(self) -> bool:
        """Read what is new; True when something changed."""
        changed = False
        for ev in self.events.read_new():
            self.live.fold(ev)
            changed = True
        if self.log_path is not None:
            try:
                st = os.stat(self.log_path)
                sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                sig = None
            if sig is not None and sig != self._log_sig:
                self._log_sig = sig
                self.log_tail = tail_lines(self.log_path)
                changed = True
        return changed

    def snapshot(self) -> tuple[RunLive, list[str]]:
        return self.live.snapshot(), list(self.log_tail)


class Mailbox:
    """Latest value per key. ``put`` returns True only when the key was empty, i.e. when the caller
    must post a message; later puts before the UI ``take``s just replace the value (coalescing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Hashable, Any] = {}

    def put(self, key: Hashable, value: Any) -> bool:
        with self._lock:
            first = key not in self._items
            self._items[key] = value
            return first

    def take(self, key: Hashable) -> Any:
        with self._lock:
            return self._items.pop(key, None)


@dataclass
class StoreSnapshot:
    results: dict[str, RunResults | None] = field(default_factory=dict)  # run id -> results.json (None: not yet)
    entries: dict[str, Any] = field(default_factory=dict)  # run id -> launcher.LaunchEntry (latest launch)
    signature: tuple = ()


class StoreScanner:
    """Lists a run store; ``scan`` is cheap when nothing changed (one stat per run)."""

    def __init__(self, root: Path, launches: Any | None = None):
        self.root = Path(root)
        self.launches = launches  # a launcher.Launcher (or None: no launch records)
        self._cache: dict[str, tuple[tuple, RunResults | None]] = {}

    def scan(self) -> StoreSnapshot:
        results: dict[str, RunResults | None] = {}
        sig = []
        try:
            names = sorted(d.name for d in os.scandir(self.root) if d.is_dir() and RUN_ID.match(d.name))
        except OSError:
            names = []
        for name in names:
            path = self.root / name / "results.json"
            try:
                st = os.stat(path)
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                key = ()
            cached = self._cache.get(name)
            if cached is None or cached[0] != key:
                data = self._read(path) if key else None
                if data is None and cached is not None and key:
                    data = cached[1]  # unreadable for a moment: keep the last good copy
                cached = (key, data)
                self._cache[name] = cached
            results[name] = cached[1]
            sig.append((name, key))
        entries = self.launches.entries() if self.launches is not None else {}
        sig.append(tuple(sorted((k, e.signature()) for k, e in entries.items())))
        return StoreSnapshot(results, entries, tuple(sig))

    @staticmethod
    def _read(path: Path) -> RunResults | None:
        try:
            data = json.loads(path.read_text())
            return RunResults.from_json(data) if isinstance(data, dict) and "run_id" in data else None
        except (OSError, ValueError, ResultsError):
            return None
