"""The run store: one directory per run, named by the hash of its canonical resolved config.

Layout of ``<runs>/<run_id>/``: ``config.toml`` (resolved), ``events.jsonl`` (append-only),
``round_NNN.pt`` (mask, written atomically) + ``round_NNN.json`` (the round's row), ``results.json``.
Shared artifacts live under ``<runs>/cache/``; experiment summaries under ``<runs>/experiments/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import torch

from .errors import DPError
from .events import Event
from .masks import Mask
from .safe_load import safe_torch_load

RUN_ID = re.compile(r"^[0-9a-f]{16}$")
ENV_RUNS_DIR = "DPTUI_RUNS_DIR"


def default_runs_dir() -> Path:
    return Path(os.environ.get(ENV_RUNS_DIR) or "runs")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def atomic_write(path: Path, write) -> None:
    """Write ``path`` via ``write(fileobj)`` into a temp file in the same folder, then ``os.replace`` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DPError(f"{path}: cannot read JSON ({err}); delete the file to rebuild it") from None


class RunDir:
    """One run's directory."""

    def __init__(self, root: Path, run_id: str):
        self.run_id = run_id
        self.path = Path(root) / run_id

    # -- files ---------------------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def round_path(self, r: int, ext: str) -> Path:
        return self.path / f"round_{r:03d}.{ext}"

    def create(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "config.toml").exists():
            atomic_write_text(self.path / "config.toml", tomli_w.dumps(config))

    # -- events --------------------------------------------------------------------------------
    def append_event(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":")) + "\n"
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    # -- rounds --------------------------------------------------------------------------------
    def save_round(self, r: int, mask: Mask, row: dict) -> None:
        """Mask first, row second: a round counts as finished only when its row exists."""
        atomic_torch_save(self.round_path(r, "pt"), {"round": r, "mask": mask})
        atomic_write_json(self.round_path(r, "json"), row)

    def finished_rounds(self) -> list[dict]:
        rows = []
        r = 1
        while self.round_path(r, "json").exists() and self.round_path(r, "pt").exists():
            rows.append(read_json(self.round_path(r, "json")))
            r += 1
        return rows

    def load_mask(self, r: int) -> Mask:
        data = safe_torch_load(self.round_path(r, "pt"))
        return data["mask"]

    def read_results(self) -> dict | None:
        return read_json(self.results_path) if self.results_path.exists() else None

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.results_path, results)


def list_runs(root: Path) -> list[dict]:
    """results.json of every run under ``root`` (runs without one yet are reported as 'pending')."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not (d.is_dir() and RUN_ID.match(d.name)):
            continue
        try:
            res = RunDir(root, d.name).read_results()
        except DPError:
            res = None
        out.append(res or {"run_id": d.name, "status": "pending"})
    return out
