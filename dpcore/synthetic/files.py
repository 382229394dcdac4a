"""Reading and writing synthetic sets.

Accepted inputs for :func:`load_synthetic`:

* an MTT output folder: ``images_best.pt`` (float32 [N, C, H, W]) and ``labels_best.pt`` (int64
  [N]); optionally a learned learning rate in ``lr_best.pt`` or ``syn_lr_best.pt`` (a scalar
  tensor) and a ``meta.json`` (written by :func:`save_synthetic`);
* a ``.pt``/``.pth`` file holding a dict ``{"images", "labels"[, "lr"]}``;
* an ``.npz`` file with arrays ``images``, ``labels`` (and optionally ``lr``).

Every problem is reported as one ``DataError`` line naming the file, what is wrong and how to fix
it. ``.pt`` files are only read with ``weights_only=True`` (no code runs on load).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dpcore.errors import DataError
from dpcore.safe_load import safe_torch_load
from dpcore.store import atomic_write
from dpcore.synthetic.set import SyntheticSet

IMAGES_FILE = "images_best.pt"
LABELS_FILE = "labels_best.pt"
LR_FILES = ("lr_best.pt", "syn_lr_best.pt")
META_FILE = "meta.json"

# Model input is normalised (about zero mean, unit variance); anything far beyond this is not.
MAX_ABS_VALUE = 50.0

_FIX_SPACE = (
    "expected normalised model input (pixels/255 minus the dataset mean, divided by its std, as "
    "Dataset.prepare gives); re-save the images in that space"
)


def _fail(src: Path | str, what: str, fix: str) -> DataError:
    return DataError(f"{src}: {what}; {fix}".replace("\n", " "))


def _torch_load(path: Path) -> object:
    try:
        return safe_torch_load(path)
    except DataError as exc:
        if str(path) in str(exc):
            raise
        raise _fail(path, str(exc), "re-save it with torch.save of plain tensors") from exc


# ---------------------------------------------------------------------------------------- load


def load_synthetic(path: str | os.PathLike[str], dataset) -> SyntheticSet:
    """Read a synthetic set made for ``dataset`` and check that it fits it (see module doc)."""
    p = Path(path)
    if p.is_dir():
        return _load_folder(p, dataset)
    if not p.exists():
        raise _fail(
            p,
            "not found",
            f"pass an MTT output folder (with {IMAGES_FILE} and {LABELS_FILE}), a .pt file or an .npz file",
        )
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        return _load_pt_file(p, dataset)
    if suffix == ".npz":
        return _load_npz(p, dataset)
    raise _fail(
        p,
        f"unsupported file type {p.suffix or '(no extension)'!r}",
        f"pass an MTT output folder (with {IMAGES_FILE} and {LABELS_FILE}), a .pt dict file or an .npz file",
    )


def _load_folder(folder: Path, dataset) -> SyntheticSet:
    img_path, lab_path = folder / IMAGES_FILE, folder / LABELS_FILE
    for f in (img_path, lab_path):
        if not f.is_file():
            raise _fail(
                f,
                "missing",
                f"a synthetic-set folder needs {IMAGES_FILE} and {LABELS_FILE} (MTT's layout); "
                "point to the folder MTT wrote (logged_files/<dataset>/<run>) or to a .pt/.npz file",
            )
    images = _torch_load(img_path)
    labels = _torch_load(lab_path)
    lr = None
    for name in LR_FILES:
        lr_path = folder / name
        if lr_path.is_file():
            lr = _check_lr(_torch_load(lr_path), lr_path)
            break
    meta: dict[str, Any] = {}
    meta_path = folder / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _fail(meta_path, f"unreadable ({type(exc).__name__})", "delete it (it is optional) or re-save the set") from exc
        if not isinstance(meta, dict):
            raise _fail(meta_path, "does not hold a JSON object", "delete it (it is optional) or re-save the set")
    imgs, labs = _validate(images, labels, dataset, img_path, lab_path)
    meta["loaded_from"] = str(folder)
    return SyntheticSet(images=imgs, labels=labs, lr=lr, meta=meta)


def _load_pt_file(p: Path, dataset) -> SyntheticSet:
    obj = _torch_load(p)
    if not isinstance(obj, dict):
        raise _fail(
            p,
            f"holds a {type(obj).__name__}, expected a dict with 'images' and 'labels'",
            "save it as torch.save({'images': x, 'labels': y}, path) or use an MTT output folder",
        )
    missing = [k for k in ("images", "labels") if k not in obj]
    if missing:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        raise _fail(p, f"has no {' or '.join(repr(k) for k in missing)} entry (keys: {keys})",
                    "save a dict with 'images' and 'labels'")
    lr = _check_lr(obj["lr"], p) if obj.get("lr") is not None else None
    imgs, labs = _validate(obj["images"], obj["labels"], dataset, p, p)
    return SyntheticSet(images=imgs, labels=labs, lr=lr, meta={"method": "file", "loaded_from": str(p)})


def _load_npz(p: Path, dataset) -> SyntheticSet:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(p, f"cannot read as .npz ({reason})", "re-save it with numpy.savez(path, images=..., labels=...)") from exc
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        keys = ", ".join(sorted(arrays)) or "none"
        raise _fail(p, f"has no {' or '.join(repr(k) for k in missing)} array (arrays: {keys})",
                    "save it with numpy.savez(path, images=..., labels=...)")
    lr = _check_lr(torch.from_numpy(np.asarray(arrays["lr"])), p) if "lr" in arrays else None
    try:
        images = torch.from_numpy(np.ascontiguousarray(arrays["images"]))
        labels = torch.from_numpy(np.ascontiguousarray(arrays["labels"]))
    except TypeError as exc:
        raise _fail(p, f"holds arrays of an unsupported dtype ({exc})", "save images as float32 and labels as int64") from exc
    imgs, labs = _validate(images, labels, dataset, p, p)
    return SyntheticSet(images=imgs, labels=labs, lr=lr, meta={"method": "file", "loaded_from": str(p)})


def _check_lr(value: object, src: Path) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype.is_complex:
            raise _fail(src, f"learning rate has shape {tuple(value.shape)} ({value.dtype})",
                        "save the learned lr as a scalar float tensor")
        lr = float(value.reshape(()))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lr = float(value)
    else:
        raise _fail(src, f"learning rate is a {type(value).__name__}", "save the learned lr as a scalar float tensor")
    if not math.isfinite(lr) or lr <= 0:
        raise _fail(src, f"learning rate is {lr!r}", "it must be a finite number > 0; delete the lr file to use the profile's lr")
    return lr


def _validate(images: object, labels: object, dataset, img_src: Path, lab_src: Path) -> tuple[Tensor, Tensor]:
    """Check a loaded set against ``dataset``; return (float32 images, int64 labels) on the CPU."""
    if not isinstance(images, Tensor):
        raise _fail(img_src, f"images are a {type(images).__name__}, expected a float tensor [N, C, H, W]",
                    "save the images with torch.save(tensor)")
    if images.dim() != 4:
        raise _fail(img_src, f"images have shape {tuple(images.shape)}, expected 4-D [N, C, H, W]",
                    "save the image batch with a channel dimension")
    n = int(images.shape[0])
    if n == 0:
        raise _fail(img_src, "holds no images", "point to a non-empty synthetic set")
    if not images.dtype.is_floating_point:
        raise _fail(img_src, f"images are {str(images.dtype).replace('torch.', '')}, not float", _FIX_SPACE)
    shape = tuple(int(s) for s in images.shape[1:])
    want = tuple(int(s) for s in dataset.shape)
    if shape != want:
        raise _fail(
            img_src,
            f"images are {'x'.join(map(str, shape))} (CxHxW) but dataset {dataset.name} is {'x'.join(map(str, want))}",
            f"use a set distilled from {dataset.name} or select the dataset this set was made for",
        )
    if not isinstance(labels, Tensor):
        raise _fail(lab_src, f"labels are a {type(labels).__name__}, expected an integer tensor [N]",
                    "save the labels with torch.save(tensor)")
    if labels.dim() != 1:
        raise _fail(lab_src, f"labels have shape {tuple(labels.shape)}, expected 1-D [N] class ids",
                    "soft or one-hot labels are not supported; save integer class ids")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise _fail(lab_src, f"labels are {str(labels.dtype).replace('torch.', '')}, not integer class ids",
                    "save them as an int64 tensor (soft labels are not supported)")
    if int(labels.shape[0]) != n:
        raise _fail(lab_src, f"{int(labels.shape[0])} labels for {n} images", "the images and labels must come from the same run")
    labels = labels.to(torch.int64).cpu()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= dataset.num_classes:
        raise _fail(
            lab_src,
            f"labels range {lo}..{hi} but dataset {dataset.name} has {dataset.num_classes} classes "
            f"(0..{dataset.num_classes - 1})",
            f"use a set distilled from {dataset.name} or select the dataset this set was made for",
        )
    images = images.detach().to("cpu", torch.float32).contiguous()
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise _fail(img_src, f"images contain {bad} non-finite value(s) (NaN/inf)",
                    "the distillation diverged: use an earlier checkpoint or distil again with a lower lr")
    mn, mx = float(images.min()), float(images.max())
    amax = max(abs(mn), abs(mx))
    space = "ZCA-whitened model input (as the dataset is loaded)" if dataset.whitened else "normalised model input"
    if mn >= 0.0 and 2.0 < mx <= 255.0:
        raise _fail(
            img_src,
            f"images look like raw 0-255 pixels (min {mn:.3g}, max {mx:.3g})",
            f"expected {space}: divide by 255, subtract the dataset mean and divide by its std "
            "(as Dataset.prepare does)" + (", then apply the dataset's ZCA" if dataset.whitened else "") + ", and save again",
        )
    if amax > MAX_ABS_VALUE:
        raise _fail(
            img_src,
            f"image values reach {amax:.3g}, implausible for {space} (roughly within +-10)",
            "the set was saved in another space or the distillation diverged; re-save or distil it again",
        )
    if not dataset.whitened and mn >= 0.0 and mx <= 1.0:
        mean = torch.tensor(dataset.mean, dtype=torch.float64)
        std = torch.tensor(dataset.std, dtype=torch.float64)
        if float((-mean / std).min()) < -0.05:  # normalised pixels of 0 are clearly negative
            raise _fail(
                img_src,
                f"images look like [0, 1] pixels (min {mn:.3g}, max {mx:.3g}), not normalised",
                "subtract the dataset mean and divide by its std (as Dataset.prepare does) and save again",
            )
    return images, labels


# ---------------------------------------------------------------------------------------- save



def _json_default(obj: object) -> object:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def save_synthetic(syn: SyntheticSet, folder: str | os.PathLike[str]) -> Path:
    """Write ``syn`` in MTT's layout (``images_best.pt``, ``labels_best.pt`` [, ``lr_best.pt``])
    plus ``meta.json``, each file atomically. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = syn.images.detach().to("cpu", torch.float32).contiguous().clone()
    labels = syn.labels.detach().to("cpu", torch.int64).contiguous().clone()
    atomic_write(folder / IMAGES_FILE, lambda f: torch.save(images, f))
    atomic_write(folder / LABELS_FILE, lambda f: torch.save(labels, f))
    if syn.lr is not None:
        lr = torch.tensor(float(syn.lr), dtype=torch.float32)
        atomic_write(folder / LR_FILES[0], lambda f: torch.save(lr, f))
    for name in LR_FILES[0 if syn.lr is None else 1 :]:  # no stale lr from an earlier set
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    save_meta(syn.meta, folder)
    return folder


def save_meta(meta: dict[str, Any], folder: str | os.PathLike[str]) -> None:
    """Write a set's ``meta.json`` atomically (also to record an evaluation of a cached set)."""
    text = json.dumps(meta, indent=1, sort_keys=True, default=_json_default, allow_nan=True)
    atomic_write(Path(folder) / META_FILE, lambda f: f.write(text.encode("utf-8")))


def record_evaluation(folder: str | os.PathLike[str], evaluation: dict[str, Any]) -> None:
    """Record an evaluation of the set in ``folder`` (a cache entry) in its ``meta.json``: ``evaluation`` and
    its ``test_acc`` beside method, params and wall time. A folder without a meta.json is left alone."""
    path = Path(folder) / META_FILE
    if path.is_file():
        meta = json.loads(path.read_text(encoding="utf-8"))
        save_meta({**meta, "evaluation": evaluation, "test_acc": evaluation["test_acc"]}, folder)
