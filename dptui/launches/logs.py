"""Reading the end of a process log (plain Python)."""

from __future__ import annotations

import os
from pathlib import Path


def tail_lines(path: Path, n: int = 200, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a text file (reading at most its last ``max_bytes``)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").replace("\r", "\n").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is probably cut
    return [ln for ln in lines if ln.strip()][-n:]
