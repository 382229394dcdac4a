"""A run store's files as data: what changed under a folder since a snapshot, and writing such files
(atomically) into another store. This is how results reach the driver's store without a shared filesystem."""

from __future__ import annotations

import os
from pathlib import Path

from dpcore.store import atomic_write_bytes

Stamp = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns)


def stamp(root: Path, under: list[str]) -> Stamp:
    """Size and mtime of every file under ``root/<u>`` for ``u`` in ``under`` (temp files skipped)."""
    out: Stamp = {}
    for u in under:
        base = root / u
        if base.is_file():
            st = base.stat()
            out[u] = (st.st_size, st.st_mtime_ns)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def changed(root: Path, under: list[str], before: Stamp, skip: frozenset[str] = frozenset()) -> tuple[dict[str, bytes], Stamp]:
    """(the bytes of every file new or changed since ``before``, the new stamp); names in ``skip`` are left out."""
    now = stamp(root, under)
    files = {}
    for rel, st in now.items():
        if before.get(rel) != st and Path(rel).name not in skip:
            try:
                files[rel] = (root / rel).read_bytes()
            except OSError:
                continue
    return files, now


def read_tree(root: Path, under: list[str]) -> dict[str, bytes]:
    return changed(root, under, {})[0]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under ``root``, each atomically; paths must stay inside it.
    JSON files go last: a round's row (``round_NNN.json``) marks it finished only once its mask is there, as the
    engine writes them, so a driver killed in the middle of a batch leaves no row without its mask."""
    base = root.resolve()
    for rel, data in sorted(files.items(), key=lambda item: item[0].endswith(".json")):
        path = (base / rel).resolve()
        if base not in path.parents:
            raise ValueError(f"refusing to write {rel!r} outside {base}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
