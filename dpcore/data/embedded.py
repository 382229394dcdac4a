"""The MNIST copies shipped inside the package (no download, ever), built by ``scripts/build_embedded_mnist.py``:

- ``embedded/mnist.npz``: all of MNIST (60,000 train and 10,000 test images), the data of ``mnist`` when no
  data root holds MNIST's IDX files (the quick start's dataset);
- ``embedded/mnist_subset.npz``: a class-balanced real subset, 1000 train and 200 test images per class
  (``mnist-embedded``).
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError

__all__ = ["load_embedded_mnist", "EMBEDDED_FILE", "FULL_FILE"]

EMBEDDED_FILE = "mnist_subset.npz"
FULL_FILE = "mnist.npz"


def _read_resource(name: str) -> bytes:
    try:
        return resources.files("dpcore.data").joinpath("embedded", name).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"dpcore/data/embedded/{name}: the embedded MNIST copy is missing from the installed "
            "package; reinstall dptui (or run scripts/build_embedded_mnist.py in a source checkout)"
        ) from exc


def load_embedded_mnist(full: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``x_train, y_train, x_test, y_test``: uint8 [N, 1, 28, 28] images, int64 labels, of the subset
    (or, ``full``, of all of MNIST)."""
    with np.load(io.BytesIO(_read_resource(FULL_FILE if full else EMBEDDED_FILE)), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return (
        torch.from_numpy(arrays["x_train"]).unsqueeze(1),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"]).unsqueeze(1),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
    )
