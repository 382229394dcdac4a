"""Expert trajectories for MTT: networks trained on the real data, parameters saved every epoch.

An expert is a fresh network trained with plain SGD (no momentum, no weight decay) at ``lr``, batch
``batch_size``, for ``epochs`` epochs with DSA (per-sample) on every batch; its flattened parameters
are recorded at initialisation and after every epoch: a float32 [epochs + 1, P] tensor.

Experts live on disk in ``<root>/<key>/expert_NNN.pt`` (one file per expert, each written
atomically, so a killed run keeps the finished ones) and are reused by every distillation with the
same key (each file is read once per distillation, into one in-memory bank of the snapshots it can
use): a hash of the data (name, whitening, shape and a digest of the labels and a sample of the
images), the architecture (its module tree and parameter shapes) and the expert hyperparameters.
The number of experts is not part of the key: asking for more trains only the missing ones.

On a GPU the experts train on the fast path: each step one CUDA graph replay (:mod:`dpcore.graphed`; fp32, as MTT
trains them, with TF32), and several experts at once (``at_once``, default :data:`EXPERTS_AT_ONCE_CUDA`), each in
its own thread and CUDA stream: one expert's small kernels leave most of an H100 idle. On the CPU they train one
at a time (the cores are already shared by the intra-op threads).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from dpcore.claims import Claim
from dpcore.errors import DataError
from dpcore.safe_load import safe_torch_load
from dpcore.store import atomic_torch_save, atomic_write_text
from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.dsa import train_augment
from dpcore.synthetic.rng import seeded_model
from dpcore.training import FastPath, Schedule, derive_seed, evaluate, train

FORMAT = 1
EXPERTS_AT_ONCE_CUDA = 4  # reasoned like dpcore.parallel.RUNS_PER_GPU; not measured on a GPU yet


@dataclass(frozen=True)
class ExpertSpec:
    """How the experts are trained (MTT's buffer.py settings)."""

    lr: float = 0.01
    epochs: int = 50
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0


class FlatParams:
    """A model's parameters as one flat vector: names, shapes and views back into a dict."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.numel = sum(self.numels)

    def flatten(self, model: nn.Module) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` shaped like the parameters (differentiable w.r.t. ``flat``)."""
        parts = torch.split(flat, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def layout(self) -> list[list[Any]]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The architecture: its module tree and every parameter's and buffer's name and shape."""
    return {
        "modules": repr(model),
        "params": FlatParams(model).layout(),
        "buffers": [[n, list(b.shape)] for n, b in model.named_buffers()],
    }


def data_fingerprint(dataset) -> dict[str, Any]:
    """Identifies the training data cheaply: all labels and up to 512 evenly spaced images."""
    y = dataset.y_train.detach().cpu().numpy().astype(np.int64)
    n = int(y.shape[0])
    stride = max(1, n // 512)
    x = dataset.x_train[::stride].detach().cpu().contiguous().numpy()
    digest = hashlib.sha256(y.tobytes())
    digest.update(str(x.dtype).encode())
    digest.update(x.tobytes())
    return {
        "name": dataset.name, "whitened": bool(dataset.whitened), "shape": list(dataset.shape),
        "num_classes": int(dataset.num_classes), "n_train": n, "mean": list(dataset.mean),
        "std": list(dataset.std), "digest": digest.hexdigest()[:32],
    }


def experts_key(dataset, model: nn.Module, spec: ExpertSpec) -> tuple[str, dict[str, Any]]:
    payload = {"format": FORMAT, "data": data_fingerprint(dataset), "model": model_fingerprint(model),
               "spec": asdict(spec)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16], payload


def _expert_file(folder: Path, index: int) -> Path:
    return folder / f"expert_{index:03d}.pt"


def _read_expert(path: Path, flat: FlatParams, epochs: int) -> dict[str, Any] | None:
    """The saved expert, or None when it is missing, unreadable or made for another layout."""
    if not path.is_file():
        return None
    try:
        obj = safe_torch_load(path)
    except DataError:
        return None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("layout") != flat.layout():
        return None
    traj = obj.get("trajectory")
    if not isinstance(traj, Tensor) or tuple(traj.shape) != (epochs + 1, flat.numel):
        return None
    if not bool(torch.isfinite(traj).all()):
        return None
    return obj


def train_expert(dataset, model_factory: Callable[[], nn.Module], spec: ExpertSpec, index: int,
                 device: torch.device, *, on_epoch: Callable[[int], None] | None = None,
                 should_stop: StopFn | None = None) -> dict[str, Any]:
    """Train expert ``index`` (init and data order seeded by ``spec.seed`` and ``index``)."""
    # Drawn on the CPU then moved: an expert's initial weights do not depend on the device.
    model = seeded_model(model_factory, derive_seed(spec.seed, "expert-init", index), device, build_on_host=True)
    flat = FlatParams(model)
    snapshots = [flat.flatten(model).cpu()]

    def record(epoch: int, epochs: int, loss: Tensor) -> None:
        snapshots.append(flat.flatten(model).cpu())
        if on_epoch is not None:
            on_epoch(epoch)

    augment = train_augment(spec.dsa, spec.dsa_strategy, derive_seed(spec.seed, "expert-dsa", index))
    schedule = Schedule(optimizer="sgd", lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
                        momentum=0.0, weight_decay=0.0)
    out = train(model, dataset.x_train, dataset.y_train, schedule=schedule,
                seed=derive_seed(spec.seed, "expert-data", index), prepare=dataset.prepare, augment=augment,
                on_epoch=record, should_stop=should_stop, fast=FastPath(cuda_graphs=True))
    acc, _ = evaluate(model, dataset.x_test, dataset.y_test, prepare=dataset.prepare)
    return {"format": FORMAT, "layout": flat.layout(), "trajectory": torch.stack(snapshots),
            "train_s": float(out.train_s), "test_acc": float(acc), "index": index}


class ExpertBuffer:
    """The experts of one key: the first ``rows`` snapshots (initialisation, epoch 1, ...) of each of
    ``count`` experts, read once into one float32 [count, rows, P] tensor (``bank``, CPU)."""

    def __init__(self, folder: Path, count: int, flat: FlatParams, epochs: int, rows: int,
                 info: dict[str, Any]) -> None:
        if not 1 <= rows <= epochs + 1:
            raise ValueError(f"rows must be in [1, {epochs + 1}], got {rows}")
        self.folder, self.count, self.flat, self.epochs, self.rows, self.info = folder, count, flat, epochs, rows, info
        self.bank = torch.empty(count, rows, flat.numel)

    def put(self, index: int, trajectory: Tensor) -> None:
        """Keep the first ``rows`` snapshots of expert ``index``'s [epochs + 1, P] trajectory."""
        self.bank[index].copy_(trajectory[: self.rows])

    def trajectory(self, index: int) -> Tensor:
        """Expert ``index``'s first ``rows`` snapshots: float32 [rows, P] on the CPU (a view of the bank)."""
        return self.bank[index]

    def on(self, device: torch.device | str, max_fraction: float = 0.5) -> Tensor:
        """The bank on ``device`` when it takes at most ``max_fraction`` of the device's free memory (a
        CUDA device), else the CPU bank (then the caller copies the snapshots it uses)."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.bank.numel() * self.bank.element_size() <= max_fraction * free:
                return self.bank.to(device)
            return self.bank
        return self.bank.to(device)


def ensure_experts(root: Path, dataset, model_factory: Callable[[], nn.Module], spec: ExpertSpec, count: int,
                   device: torch.device | str, *, rows: int | None = None, progress: ProgressFn | None = None,
                   should_stop: StopFn | None = None, at_once: int | None = None) -> ExpertBuffer:
    """The first ``count`` experts of this key under ``root``, training (and saving) the missing ones;
    every expert's first ``rows`` snapshots (default: all ``spec.epochs + 1``) are kept in the bank.

    ``at_once``: experts trained at the same time, each in its own thread and CUDA stream (default: 4 on CUDA,
    1 elsewhere). Raises :class:`dpcore.training.Stopped` when ``should_stop`` fires; finished experts stay saved.
    """
    device = torch.device(device)
    probe = model_factory()
    key, payload = experts_key(dataset, probe, spec)
    flat = FlatParams(probe)
    del probe
    folder = Path(root) / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "spec.json").is_file():
        atomic_write_text(folder / "spec.json", json.dumps(payload, indent=1, sort_keys=True) + "\n")
    buffer = ExpertBuffer(folder, count, flat, spec.epochs, spec.epochs + 1 if rows is None else rows, {})
    stats: dict[int, tuple[float, float]] = {}  # index -> (train_s, test_acc)
    missing = []
    for i in range(count):
        obj = _read_expert(_expert_file(folder, i), flat, spec.epochs)
        if obj is None:
            missing.append(i)
        else:
            stats[i] = (float(obj["train_s"]), float(obj["test_acc"]))
            buffer.put(i, obj["trajectory"])
    total = len(missing) * spec.epochs
    epochs_done = dict.fromkeys(missing, 0)
    lock = threading.Lock()
    if progress is not None and missing:
        progress(0, total, None)
    data = dataset.to(device) if missing else dataset
    t0 = time.perf_counter()

    def train_one(i: int) -> None:
        def on_epoch(epoch: int) -> None:
            with lock:
                epochs_done[i] = epoch
                if progress is not None:
                    progress(sum(epochs_done.values()), total, None)

        # Claimed while it is trained (the lock beside the experts folder, which holds experts only): another
        # process training the same expert is waited for, then read.
        with Claim(Path(root).parent / ".claims" / f"experts-{key}-{i:03d}.lock"):
            obj = _read_expert(_expert_file(folder, i), flat, spec.epochs)
            if obj is None:
                obj = train_expert(data, model_factory, spec, i, device, on_epoch=on_epoch, should_stop=should_stop)
                atomic_torch_save(_expert_file(folder, i), obj)
        with lock:
            stats[i] = (obj["train_s"], obj["test_acc"])
            buffer.put(i, obj["trajectory"])
            epochs_done[i] = spec.epochs

    workers = min(len(missing), at_once if at_once is not None else
                  (EXPERTS_AT_ONCE_CUDA if device.type == "cuda" else 1))
    if workers <= 1:
        for i in missing:
            train_one(i)
    else:
        def on_own_stream(i: int) -> None:
            if device.type != "cuda":
                return train_one(i)
            with torch.cuda.stream(torch.cuda.Stream(device)):
                train_one(i)
            torch.cuda.synchronize(device)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="expert") as pool:
            for future in [pool.submit(on_own_stream, i) for i in missing]:
                future.result()  # the first error (a Stopped included) is raised here, after the others end
    buffer.info = {
        "key": key, "folder": str(folder), "count": count, "trained_now": len(missing),
        "trained_now_s": time.perf_counter() - t0 if missing else 0.0,
        "train_s": float(sum(s for s, _ in stats.values())),
        "mean_test_acc": float(np.mean([a for _, a in stats.values()])), "spec": asdict(spec),
    }
    return buffer
