"""CIFAR-10 / CIFAR-100 from the extracted python batches or the official ``.tar.gz`` archive.

The archive is read in memory (never extracted to disk) and hashed while it is read; a checksum
that differs from the official one is a warning, not an error. Pickles go through
:func:`dpcore.safe_load.safe_pickle_load` only.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError, DataWarning
from dpcore.safe_load import safe_pickle_load

__all__ = ["CifarSpec", "CIFAR10", "CIFAR100", "load_cifar"]


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str  # directory inside the archive / after extraction
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR10 = CifarSpec(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
)
CIFAR100 = CifarSpec(
    name="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
)

_CHUNK = 8 << 20


def _str_keys(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: expected a pickled dict, got {type(obj).__name__}; the file is not a CIFAR python batch"
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch(obj: object, where: str, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(obj, where)
    for key in ("data", spec.label_key):
        if key not in d:
            raise DataError(
                f"{where}: the batch has no '{key}' entry (keys: {', '.join(sorted(d))}); "
                f"it is not a {spec.name} python batch, get a fresh copy"
            )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{where}: 'data' is {desc}, expected uint8 [N, 3072] (3x32x32 channel-major); "
            f"the file is not a {spec.name} python batch"
        )
    try:
        labels = np.asarray(d[spec.label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: '{spec.label_key}' is not a list of integers; the file is damaged") from exc
    if len(labels) != len(data):
        raise DataError(
            f"{where}: {len(labels)} labels for {len(data)} images; the file is truncated or damaged, get a fresh copy"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"{where}: labels range {labels.min()}..{labels.max()} is outside 0..{spec.num_classes - 1}; "
            f"the file is not a {spec.name} batch"
        )
    return data, labels


def _class_names(obj: object, where: str, spec: CifarSpec) -> tuple[str, ...]:
    d = _str_keys(obj, where)
    names = d.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise DataError(
            f"{where}: no '{spec.names_key}' list of {spec.num_classes} names; the meta file is damaged, get a fresh copy"
        )
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _assemble(
    spec: CifarSpec, read: Callable[[str], object], where: Callable[[str], str]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    train = [_batch(read(f), where(f), spec) for f in spec.train_files]
    x_test_np, y_test_np = _batch(read(spec.test_file), where(spec.test_file), spec)
    classes = _class_names(read(spec.meta_file), where(spec.meta_file), spec)
    x_train = torch.from_numpy(np.concatenate([b[0] for b in train]).reshape(-1, 3, 32, 32))
    y_train = torch.from_numpy(np.concatenate([b[1] for b in train]))
    x_test = torch.from_numpy(np.ascontiguousarray(x_test_np).reshape(-1, 3, 32, 32))
    y_test = torch.from_numpy(y_test_np)
    return x_train, y_train, x_test, y_test, classes


def _load_folder(directory: Path, spec: CifarSpec):
    def read(name: str) -> object:
        path = directory / name
        try:
            with open(path, "rb") as f:
                return safe_pickle_load(f, path)
        except FileNotFoundError as exc:
            raise DataError(
                f"{path}: file missing from the extracted {spec.name} folder; re-extract {spec.archive} "
                f"or pass --data-root DIR pointing at the folder that holds {spec.archive}"
            ) from exc

    return _assemble(spec, read, lambda name: str(directory / name))


def _read_hashed(path: Path) -> tuple[bytes, str]:
    md5 = hashlib.md5()
    chunks = []
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            chunks.append(chunk)
    return b"".join(chunks), md5.hexdigest()


def _load_archive(path: Path, spec: CifarSpec):
    try:
        raw, digest = _read_hashed(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}); check the file's permissions") from exc
    if digest != spec.md5:
        warnings.warn(
            f"{path}: checksum differs from the official archive (md5 {digest}, official {spec.md5}); "
            "reading it anyway",
            DataWarning,
            stacklevel=4,
        )
    wanted = set(spec.train_files) | {spec.test_file, spec.meta_file}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tf:
            del raw
            for member in tf:
                parts = member.name.replace("\\", "/").strip("/").split("/")
                if member.isfile() and parts[-1] in wanted and len(parts) >= 2 and parts[-2] == spec.folder:
                    fobj = tf.extractfile(member)
                    if fobj is not None:
                        members[parts[-1]] = fobj.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: not a readable tar.gz archive ({exc}); the download is incomplete or damaged, get a fresh copy"
        ) from exc

    def read(name: str) -> object:
        if name not in members:
            raise DataError(
                f"{path}: the archive has no {spec.folder}/{name}; it is not the {spec.name} python archive "
                f"({spec.archive}), get a fresh copy"
            )
        return safe_pickle_load(io.BytesIO(members.pop(name)), f"{path}:{spec.folder}/{name}")

    return _assemble(spec, read, lambda name: f"{path}:{spec.folder}/{name}")


def load_cifar(root: str | Path, spec: CifarSpec) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """Return ``x_train, y_train, x_test, y_test, classes``; images uint8 [N, 3, 32, 32], labels int64.

    ``root`` may be the data root (holding ``<folder>/`` or the archive), the extracted folder
    itself, or the archive file. The extracted folder is preferred when both are present.
    """
    root = Path(root).expanduser()
    if root.is_file():
        return _load_archive(root, spec)
    files = (*spec.train_files, spec.test_file, spec.meta_file)
    partial = None  # (folder, missing files) of an incomplete extracted folder
    for directory in (root / spec.folder, root):
        present = [f for f in files if (directory / f).is_file()]
        if len(present) == len(files):
            return _load_folder(directory, spec)
        if partial is None and (present or (directory == root / spec.folder and directory.is_dir())):
            partial = directory, ", ".join(f for f in files if f not in present)
    if (root / spec.archive).is_file():
        if partial is not None:
            warnings.warn(f"{partial[0]}/ is an incomplete {spec.name} folder (missing {partial[1]}); "
                          f"reading {root / spec.archive} instead", DataWarning, stacklevel=2)
        return _load_archive(root / spec.archive, spec)
    if partial is not None:
        raise DataError(
            f"{partial[0]}/ is an incomplete {spec.name} folder: missing {partial[1]}; re-extract {spec.archive} "
            f"there, or put {spec.archive} in {root}"
        )
    raise DataError(
        f"{spec.name} not found: looked for {root / spec.folder}/ and {root / spec.archive}; pass --data-root DIR "
        f"pointing at the folder that holds {spec.archive} (or its extracted {spec.folder}/)"
    )
