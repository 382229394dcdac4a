"""``.npz`` datasets with ``x_train, y_train, x_test, y_test`` arrays (no pickles allowed)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError

__all__ = ["load_npz", "NPZ_KEYS"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """Any accepted image layout/dtype -> uint8 [N, C, H, W]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3):
            pass  # [N, C, H, W]
        elif x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # [N, H, W, C]
        else:
            raise DataError(
                f"{where}: shape {x.shape} has no channel axis of size 1 or 3; store images as [N,H,W], "
                "[N,H,W,C] or [N,C,H,W] with C = 1 or 3"
            )
    else:
        raise DataError(
            f"{where}: shape {x.shape} is not [N,H,W], [N,H,W,C] or [N,C,H,W]; reshape the images before saving"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_ or x.dtype.kind not in "uif":
        raise DataError(f"{where}: images have dtype {x.dtype}; store uint8 in 0..255 or floats in [0, 1]")
    if x.size == 0:
        return np.ascontiguousarray(x.astype(np.uint8))
    lo, hi = x.min(), x.max()
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or lo < 0 or hi > 1:
            raise DataError(
                f"{where}: float images range {float(lo):.4g}..{float(hi):.4g}, expected values in [0, 1]; "
                "scale them to [0, 1] or store uint8"
            )
        return np.ascontiguousarray(np.rint(x.astype(np.float64) * 255.0).astype(np.uint8))
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: integer images range {lo}..{hi}, expected 0..255; store uint8 images")
    return np.ascontiguousarray(x.astype(np.uint8))


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}, expected [N]; store class indices, not one-hot")
    if y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise DataError(f"{where}: labels have dtype {y.dtype}, expected integers; store class indices as int64")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images; the arrays do not match")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative label {y.min()}; labels must be class indices 0..K-1")
    return y.astype(np.int64)


def load_npz(path: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Return ``x_train, y_train, x_test, y_test, num_classes`` (uint8 [N,C,H,W], int64 labels)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass --path pointing at an .npz with {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(npz.files) or 'none'}); "
                    f"save with np.savez(path, {'=..., '.join(NPZ_KEYS)}=...)"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickles
        raise DataError(
            f"{path}: cannot read without pickles ({exc}); store plain numeric arrays, not object arrays"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); save it with np.savez") from exc

    x_train = _images(arrays["x_train"], f"{path}:x_train")
    x_test = _images(arrays["x_test"], f"{path}:x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{path}: x_test images are {x_test.shape[1:]} (C,H,W) but x_train images are {x_train.shape[1:]}; "
            "both splits must have the same image shape"
        )
    if len(x_train) == 0:
        raise DataError(f"{path}:x_train: no training images; the dataset is empty")
    y_train = _labels(arrays["y_train"], len(x_train), f"{path}:y_train")
    y_test = _labels(arrays["y_test"], len(x_test), f"{path}:y_test")
    num_classes = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
        num_classes,
    )
