"""Datasets: readers for MNIST, Fashion-MNIST, CIFAR-10/100, image folders, .npz files, and the
MNIST subset shipped inside the package. :func:`load_dataset` is the public entry point.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from dpcore.data.dataset import Dataset
from dpcore.data.zca import ZCA
from dpcore.errors import DataError

__all__ = ["Dataset", "DATASET_NAMES", "ZCA", "load_dataset", "whiten", "channel_stats"]

DATASET_NAMES: tuple[str, ...] = (
    "mnist-embedded",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "imagefolder",
    "npz",
)

_ALIASES = {
    "mnist_embedded": "mnist-embedded",
    "embedded": "mnist-embedded",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}

_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100_STATS = ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
_DIGITS = tuple(str(i) for i in range(10))
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def channel_stats(x: Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 [N, C, H, W] images on the [0, 1] scale."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        b = x[i : i + chunk].to(torch.float64).div_(255.0)
        s += b.sum(dim=(0, 2, 3))
        s2 += b.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / count
    std = (s2 / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(1e-6)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _augment_for(x: Tensor) -> str:
    return "crop_flip" if tuple(x.shape[1:]) == (3, 32, 32) else "none"


def _need_root(root: str | Path | None, name: str, holds: str) -> Path:
    if root is None:
        raise DataError(f"dataset '{name}' needs a data folder; pass --data-root DIR pointing at the folder that holds {holds}")
    return Path(root).expanduser()


def _need_path(path: str | Path | None, root: str | Path | None, name: str, what: str) -> Path:
    chosen = path if path is not None else root
    if chosen is None:
        raise DataError(f"dataset '{name}' needs a location; pass --path pointing at {what}")
    return Path(chosen).expanduser()


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASET_NAMES)}")
    return key


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    path: str | Path | None = None,
    zca: bool = False,
) -> Dataset:
    """Load a dataset into CPU tensors.

    ``name`` is one of :data:`DATASET_NAMES`. ``root`` is the data folder for mnist /
    fashion-mnist / cifar10 / cifar100 (the folder holding ``MNIST/raw/``, ``FashionMNIST/raw/``,
    ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``, ...; the dataset's own folder or archive
    works too). ``path`` is the image folder (``imagefolder``) or ``.npz`` file (``npz``).
    "mnist-embedded" ignores both; "mnist" reads the package's own copy of MNIST when ``root`` holds no MNIST
    IDX files (the same 70,000 images, so the same runs). With ``zca=True`` the images become float32 ZCA-whitened
    tensors (fitted on the [0, 1]-scaled train split, eps 0.1, as MTT) and ``whitened`` is True.
    """
    from dpcore.data.idx import has_idx

    key = _canonical(name)
    if key == "mnist-embedded":
        from dpcore.data.embedded import load_embedded_mnist

        x_tr, y_tr, x_te, y_te = load_embedded_mnist()
        ds = Dataset(key, x_tr, y_tr, x_te, y_te, 10, *_MNIST_STATS, classes=_DIGITS)
    elif key == "mnist" and (root is None or not has_idx(root, "MNIST")):  # the package's copy of the same files
        from dpcore.data.embedded import load_embedded_mnist

        x_tr, y_tr, x_te, y_te = load_embedded_mnist(full=True)
        ds = Dataset(key, x_tr, y_tr, x_te, y_te, 10, *_MNIST_STATS, classes=_DIGITS)
    elif key in ("mnist", "fashion-mnist"):
        from dpcore.data.idx import load_idx_dataset

        folder = "MNIST" if key == "mnist" else "FashionMNIST"
        r = _need_root(root, key, f"{folder}/raw/ (torchvision layout)")
        x_tr, y_tr, x_te, y_te = load_idx_dataset(r, folder)
        stats = _MNIST_STATS if key == "mnist" else _FASHION_STATS
        classes = _DIGITS if key == "mnist" else _FASHION_CLASSES
        ds = Dataset(key, x_tr, y_tr, x_te, y_te, 10, *stats, classes=classes)
    elif key in ("cifar10", "cifar100"):
        from dpcore.data.cifar import CIFAR10, CIFAR100, load_cifar

        spec = CIFAR10 if key == "cifar10" else CIFAR100
        r = _need_root(root, key, f"{spec.archive} or {spec.folder}/")
        x_tr, y_tr, x_te, y_te, classes = load_cifar(r, spec)
        stats = _CIFAR10_STATS if key == "cifar10" else _CIFAR100_STATS
        ds = Dataset(key, x_tr, y_tr, x_te, y_te, spec.num_classes, *stats, classes=classes, augment="crop_flip")
    elif key == "imagefolder":
        from dpcore.data.imagefolder import load_imagefolder

        p = _need_path(path, root, key, "a folder holding train/<class>/*.png and test/<class>/*.png")
        x_tr, y_tr, x_te, y_te, classes = load_imagefolder(p)
        ds = Dataset(
            key, x_tr, y_tr, x_te, y_te, len(classes), *channel_stats(x_tr), classes=classes, augment=_augment_for(x_tr)
        )
    else:  # npz
        from dpcore.data.npz import load_npz

        p = _need_path(path, root, key, "an .npz file with x_train, y_train, x_test, y_test")
        x_tr, y_tr, x_te, y_te, k = load_npz(p)
        ds = Dataset(
            key,
            x_tr,
            y_tr,
            x_te,
            y_te,
            k,
            *channel_stats(x_tr),
            classes=tuple(str(i) for i in range(k)),
            augment=_augment_for(x_tr),
        )
    if zca:
        ds = whiten(ds)
    return ds


def whiten(ds: Dataset) -> Dataset:
    """ZCA-whiten a uint8 dataset as MTT does (fit on the [0, 1]-scaled train split, eps 0.1)."""
    if ds.whitened:
        return ds
    z = ZCA.fit_cached(ds.x_train)
    return replace(ds, x_train=z(ds.x_train), x_test=z(ds.x_test), whitened=True)
