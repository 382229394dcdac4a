"""MNIST-style IDX files (MNIST, Fashion-MNIST) in torchvision's ``<root>/<Name>/raw/`` layout."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError

__all__ = ["read_idx", "find_idx_dir", "load_idx_dataset", "IDX_FILES"]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file is damaged, get a fresh copy of it") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) of unsigned bytes into a numpy array of its dims."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: file is only {len(data)} bytes, not an IDX file; get a fresh copy of it")
    zero, dtype_code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or ndim == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000080N); not an IDX file, get a fresh copy"
        )
    if dtype_code != _UBYTE:
        raise DataError(
            f"{path}: IDX element type 0x{dtype_code:02x} is not unsigned bytes (0x08); only MNIST-style uint8 "
            "files are supported"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is truncated ({len(data)} bytes); get a fresh copy of the file")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says dims {dims} ({expected} bytes) but the file holds {len(data) - header} bytes "
            "of data; the file is truncated or damaged, get a fresh copy"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _candidates(root: Path, folder: str) -> list[Path]:
    """Directories that may hold the raw IDX files: data root, the <folder> dir, or the raw dir."""
    return [root / folder / "raw", root / "raw", root]


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def has_idx(root: str | Path, folder: str) -> bool:
    """Whether any of the four IDX files is under ``root`` (where :func:`find_idx_dir` looks)."""
    root = Path(root).expanduser()
    return any(_file_in(d, stem) for d in _candidates(root, folder) for stem in IDX_FILES.values())


def find_idx_dir(root: str | Path, folder: str) -> dict[str, Path]:
    """Locate the four IDX files under ``root`` (data root, ``<folder>`` dir or its ``raw`` dir)."""
    root = Path(root).expanduser()
    for directory in _candidates(root, folder):
        found = {key: _file_in(directory, stem) for key, stem in IDX_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if any(found.values()):
            missing = ", ".join(str(directory / IDX_FILES[k]) + "[.gz]" for k, v in found.items() if v is None)
            raise DataError(
                f"{folder} is incomplete: missing {missing}; copy all four IDX files (torchvision's {folder}/raw/ "
                "layout) into that folder"
            )
    looked = ", ".join(str(d / IDX_FILES["train_images"]) + "[.gz]" for d in _candidates(root, folder))
    raise DataError(
        f"{folder} not found: looked for {looked}; pass --data-root DIR pointing at the folder that holds "
        f"{folder}/raw/ (torchvision layout: train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz], ...)"
    )


def _split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[Tensor, Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: expected IDX images with 3 dims [N, H, W], got shape {images.shape}; "
            "is it a labels file? check the file names"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected IDX labels with 1 dim [N], got shape {labels.shape}; "
            "is it an images file? check the file names"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the files do not belong together, get matching copies"
        )
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is out of range for {num_classes} classes; "
            "the file is damaged or from another dataset"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, H, W]
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_idx_dataset(root: str | Path, folder: str, num_classes: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``x_train, y_train, x_test, y_test`` (uint8 [N,1,H,W], int64 [N]) from IDX files."""
    files = find_idx_dir(root, folder)
    x_train, y_train = _split(files["train_images"], files["train_labels"], num_classes)
    x_test, y_test = _split(files["test_images"], files["test_labels"], num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{files['test_images']}: test images are {tuple(x_test.shape[2:])} but train images are "
            f"{tuple(x_train.shape[2:])}; the files come from different datasets"
        )
    return x_train, y_train, x_test, y_test
