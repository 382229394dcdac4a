"""The MNIST subset shipped inside the package (the default dataset; needs no download).

``embedded/mnist_subset.npz`` holds a class-balanced real subset of MNIST: 1000 train and 200 test
images per class, built by ``scripts/build_embedded_mnist.py``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError

__all__ = ["load_embedded_mnist", "EMBEDDED_FILE"]

EMBEDDED_FILE = "mnist_subset.npz"


def _read_resource() -> bytes:
    try:
        return resources.files("dpcore.data").joinpath("embedded", EMBEDDED_FILE).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"dpcore/data/embedded/{EMBEDDED_FILE}: the embedded MNIST subset is missing from the installed "
            "package; reinstall dptui (or run scripts/build_embedded_mnist.py in a source checkout)"
        ) from exc


def load_embedded_mnist() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``x_train, y_train, x_test, y_test``: uint8 [N, 1, 28, 28] images, int64 labels."""
    with np.load(io.BytesIO(_read_resource()), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return (
        torch.from_numpy(arrays["x_train"]).unsqueeze(1),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"]).unsqueeze(1),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
    )
