"""``<path>/train/<class>/*.png|jpg|jpeg`` and ``<path>/test/<class>/...`` image folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from dpcore.errors import DataError, DataWarning

__all__ = ["load_imagefolder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _list_split(split_dir: Path, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir}: folder not found; an image folder dataset needs {split_dir.parent}/train/<class>/*.png "
            f"and {split_dir.parent}/test/<class>/*.png"
        )
    subdirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = tuple(subdirs)
        if not classes:
            raise DataError(
                f"{split_dir}: no class subfolders; put each class's images in {split_dir}/<class name>/"
            )
    else:
        extra = [name for name in subdirs if name not in classes]
        if extra:
            raise DataError(
                f"{split_dir / extra[0]}: class '{extra[0]}' is not a class of the train split "
                f"({', '.join(classes)}); rename it or add it to train/"
            )
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            warnings.warn(f"{class_dir}: no .png/.jpg/.jpeg images in this class folder", DataWarning, stacklevel=4)
        items.extend((p, label) for p in files)
    if not items:
        raise DataError(f"{split_dir}: no .png/.jpg/.jpeg images in any class folder; add images or fix the path")
    return classes, items


def _decode(path: Path, mode) -> Tensor:
    from torchvision.io import decode_image, read_file

    try:
        with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its image codecs in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=mode)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError/ValueError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({first}); the file is damaged or not a PNG/JPEG") from exc


def load_imagefolder(path: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """Return ``x_train, y_train, x_test, y_test, classes`` (uint8 [N,C,H,W], int64 labels).

    Classes are the sorted subfolder names of ``train/``. Images stay single-channel when every
    image is grayscale, otherwise all are decoded as RGB. All images must have the same size.
    """
    from torchvision.io import ImageReadMode

    root = Path(path).expanduser()
    classes, train_items = _list_split(root / "train", None)
    _, test_items = _list_split(root / "test", classes)
    items = train_items + test_items

    images = [_decode(p, ImageReadMode.UNCHANGED) for p, _ in items]
    gray = all(img.shape[0] in (1, 2) for img in images)  # 2 = gray + alpha
    for i, (p, _) in enumerate(items):
        c = images[i].shape[0]
        if gray and c == 2:
            images[i] = _decode(p, ImageReadMode.GRAY)
        elif not gray and c != 3:
            images[i] = _decode(p, ImageReadMode.RGB)

    expected = tuple(images[0].shape[1:])
    for (p, _), img in zip(items, images):
        if tuple(img.shape[1:]) != expected:
            raise DataError(
                f"{p}: image is {img.shape[2]}x{img.shape[1]} (WxH) but {items[0][0]} is {expected[1]}x{expected[0]}; "
                "resize all images to one size"
            )
    n_train = len(train_items)
    x = torch.stack(images)
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return x[:n_train].contiguous(), y[:n_train], x[n_train:].contiguous(), y[n_train:], classes
