"""EL2N / GraNd data-diet selection (Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet", 2021).

Not a distillation: the set is ``ipc`` REAL training images of every class, chosen by how hard the
image is for briefly trained networks.

1. Train ``seeds`` freshly initialised copies of the model (each its own initialisation and data
   order) for ``epochs`` epochs on the real training split with :func:`dpcore.training.train`
   (SGD/Adam, the dataset's ``prepare``; crop-and-flip augmentation only with ``augment = true`` on
   CIFAR-like data).
2. Score every training image with each network, in batched no-grad evaluation passes (eval mode):

   * ``score = "el2n"``: the error L2 norm ``||softmax(f(x)) - onehot(y)||_2``;
   * ``score = "grand"``: the norm of the gradient of the cross-entropy w.r.t. the OUTPUT LAYER's
     parameters, in closed form per sample. For logits ``z = W h + b`` (``h = model.embed(x)``,
     the output layer's input), ``dL/dW = (p - y) h^T`` and ``dL/db = p - y``, so the norm is
     ``||p - y||_2 * sqrt(||h||_2^2 + 1)`` (without the ``+ 1`` when the layer has no bias). Paul et
     al.'s GraNd is the norm over all the weights; the output-layer part is the standard cheap
     stand-in (the last layer's gradient dominates and is exact per sample without per-sample
     backprop). Their GraNd is taken at initialisation: set ``epochs = 0`` for that.

   The score is the mean over the seeds.
3. Keep the ``ipc`` images of every class with the largest scores (``keep = "hardest"``, the paper's
   choice) or the smallest (``keep = "easiest"``; which end is better at tiny budgets is open: at
   few images per class the hardest are often mislabelled or atypical). Ties go to the lower index.

The images are returned prepared (model input, float32, CPU), class-major, like the other methods'.
``meta["indices"]`` are the chosen train indices; ``meta["scores"]`` summarises the scores.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpcore.augment import crop_flip
from dpcore.errors import ConfigError
from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.meta import distill_meta
from dpcore.synthetic.model_spec import model_from_spec
from dpcore.synthetic.params import check_ipc, check_positive, resolve_params
from dpcore.synthetic.rng import seeded_model
from dpcore.synthetic.sampling import take_per_class
from dpcore.synthetic.set import SyntheticSet
from dpcore.training import Schedule, Stopped, Stopwatch, derive_seed, train

SCORES = ("el2n", "grand")
KEEPS = ("hardest", "easiest")
OPTIMIZERS = ("sgd", "adam")
# Images scored per forward pass, as input elements (bounds the activation memory).
_SCORE_CHUNK_ELEMS = 1 << 22


def _choice(method: str, p: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    if p[key] not in allowed:
        raise ConfigError(f"synthetic method {method!r}: {key} = {p[key]!r} is not allowed; "
                          f"choose one of: {', '.join(allowed)}")


@torch.no_grad()
def score_batch(model: nn.Module, x: Tensor, y: Tensor, score: str) -> tuple[Tensor, Tensor]:
    """(per-sample score, per-sample cross-entropy) of one prepared batch, float32, on its device."""
    if score == "grand":
        head = getattr(model, "classifier", None)
        if not hasattr(model, "embed") or not isinstance(head, nn.Linear):
            raise ConfigError(f"synthetic method 'el2n': score = 'grand' needs a model with embed() and a Linear "
                              f"classifier (a dpcore.models model), got {type(model).__name__}; use score = 'el2n'")
        h = model.embed(x).flatten(1).float()
        logits = head(h).float()
    else:
        logits = model(x).float()
    p = torch.softmax(logits, dim=1)
    err = p.clone()
    err[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    norm = torch.linalg.vector_norm(err, dim=1)
    if score == "grand":
        sq = h.pow(2).sum(1) + (1.0 if head.bias is not None else 0.0)
        norm = norm * sq.sqrt()
    return norm, F.cross_entropy(logits, y, reduction="none")


@torch.no_grad()
def score_split(model: nn.Module, x: Tensor, y: Tensor, prepare: Callable[[Tensor], Tensor], score: str,
                batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(scores [N], cross-entropies [N]) of every image of ``x`` under ``model`` in eval mode, computed in
    batches on the model's device (the mode is restored afterwards)."""
    device = next(model.parameters()).device
    n = x.shape[0]
    if batch_size is None:
        batch_size = max(1, _SCORE_CHUNK_ELEMS // max(1, math.prod(x.shape[1:])))
    was_training = model.training
    model.eval()
    scores = torch.empty(n, device=device)
    losses = torch.empty(n, device=device)
    for i in range(0, n, batch_size):
        xb = prepare(x[i: i + batch_size].to(device)).to(torch.float32)
        s, lo = score_batch(model, xb, y[i: i + batch_size].to(device), score)
        scores[i: i + batch_size] = s
        losses[i: i + batch_size] = lo
    model.train(was_training)
    return scores, losses


def select(scores: Tensor, labels: Tensor, num_classes: int, ipc: int, keep: str) -> Tensor:
    """Train indices of the ``ipc`` highest (``"hardest"``) or lowest (``"easiest"``) scores of every
    class, class-major and in score order within a class (ties: lower index first). CPU int64."""
    scores, labels = scores.detach().cpu().double(), labels.detach().cpu()
    by_score = torch.argsort(-scores if keep == "hardest" else scores, stable=True)
    order = by_score[torch.argsort(labels[by_score], stable=True)]  # class-major, score order within
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    idx, _ = take_per_class(order, starts, torch.full((num_classes,), ipc, dtype=torch.long))
    return idx


class DataDietEL2N:
    name = "el2n"
    defaults: dict[str, Any] = {
        "seeds": 4,  # networks trained and scored (the score is their mean)
        "epochs": 10,  # epochs each network trains before scoring (0: score at initialisation)
        "score": "el2n",  # "el2n" or "grand" (output-layer gradient norm)
        "keep": "hardest",  # "hardest" (largest scores) or "easiest"
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "augment": False,  # crop-and-flip during the trainings, on CIFAR-like data
        "model": "",  # "" = the profile's model; else e.g. "convnet:width=32" (see model_spec.model_from_spec)
    }

    def check(self, p: dict[str, Any]) -> None:
        check_positive(self.name, p, "seeds", "lr", "batch_size")
        if p["epochs"] < 0:
            raise ConfigError(f"synthetic method {self.name!r}: epochs must be >= 0, got {p['epochs']!r}")
        if p["momentum"] < 0 or p["weight_decay"] < 0:
            raise ConfigError(f"synthetic method {self.name!r}: momentum and weight_decay must be >= 0, "
                              f"got {p['momentum']!r} and {p['weight_decay']!r}")
        _choice(self.name, p, "score", SCORES)
        _choice(self.name, p, "keep", KEEPS)
        _choice(self.name, p, "optimizer", OPTIMIZERS)

    def scores(self, dataset, *, model_factory: Callable[[], nn.Module], seed: int, device: torch.device | str,
               params: dict[str, Any] | None = None, progress: ProgressFn | None = None,
               should_stop: StopFn | None = None) -> tuple[Tensor, dict[str, Any]]:
        """The mean score of every training image (float32 [N], CPU) and what the scoring did:
        ``{"seeds_done", "stopped", "train_loss": [per seed mean train cross-entropy at scoring]}``.
        A stop ends it early with the seeds done (the one in progress, partly trained, included)."""
        p = resolve_params(self.name, self.defaults, params)
        self.check(p)
        device = torch.device(device)
        factory = model_from_spec(self.name, p["model"], dataset, model_factory, device)
        data = dataset if dataset.device == device else dataset.to(device)
        x, y = data.x_train, data.y_train
        schedule = Schedule(optimizer=p["optimizer"], lr=p["lr"], epochs=p["epochs"], batch_size=p["batch_size"],
                            momentum=p["momentum"], weight_decay=p["weight_decay"])
        augment = ((lambda xb, gen: crop_flip(xb, 4, generator=gen))
                   if p["augment"] and dataset.augment == "crop_flip" else None)
        per_seed = p["epochs"] + 1  # progress units: each epoch, then the scoring pass
        total = p["seeds"] * per_seed
        if progress is not None:
            progress(0, total, None)
        total_scores = torch.zeros(x.shape[0], device=device)
        train_loss: list[Tensor] = []
        stopped = False
        for s in range(p["seeds"]):
            if s > 0 and should_stop is not None and should_stop():
                stopped = True
                break
            model = seeded_model(factory, derive_seed(seed, "el2n-init", s), device)

            def on_epoch(done: int, epochs: int, loss: Tensor, s: int = s) -> None:
                if progress is not None:
                    progress(s * per_seed + done, total, float(loss))

            try:
                train(model, x, y, schedule=schedule, seed=derive_seed(seed, "el2n-data", s), prepare=data.prepare,
                      augment=augment, on_epoch=on_epoch, should_stop=should_stop)
            except Stopped:
                stopped = True  # score with this partly trained network too: a stop still gives a set
            sc, ce = score_split(model, x, y, data.prepare, p["score"])
            total_scores += sc
            with torch.no_grad():
                train_loss.append(ce.mean())
            if progress is not None:
                progress(s * per_seed + per_seed, total, None)
            del model
            if stopped:
                break
        done = len(train_loss)
        mean = (total_scores / done).cpu()
        info = {"seeds_done": done, "stopped": stopped,
                "train_loss": torch.stack(train_loss).cpu().tolist() if train_loss else []}
        return mean, info

    def distill(
        self,
        dataset,
        *,
        ipc: int,
        model_factory: Callable[[], nn.Module],
        seed: int,
        device: torch.device | str = "cpu",
        params: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> SyntheticSet:
        p = resolve_params(self.name, self.defaults, params)
        self.check(p)
        check_ipc(dataset, ipc, self.name)
        device = torch.device(device)
        watch = Stopwatch(device)
        scores, info = self.scores(dataset, model_factory=model_factory, seed=seed, device=device, params=p,
                                   progress=progress, should_stop=should_stop)
        labels_all = dataset.y_train.cpu()
        idx = select(scores, labels_all, dataset.num_classes, ipc, p["keep"])
        x = dataset.prepare(dataset.x_train[idx.to(dataset.x_train.device)])
        images = x.to(device="cpu", dtype=torch.float32, copy=True)
        labels = labels_all[idx].to(torch.int64)
        chosen = scores[idx]
        summary = {
            "score": p["score"], "keep": p["keep"], "seeds_done": info["seeds_done"],
            "all": _stats(scores), "selected": _stats(chosen),
            "selected_values": [float(v) for v in chosen.tolist()],
            "train_loss": info["train_loss"],
        }
        losses = torch.tensor(info["train_loss"], dtype=torch.float32) if info["train_loss"] else None
        meta = distill_meta(self.name, dataset, ipc=ipc, seed=seed, params=p, distill_s=watch.elapsed(),
                            done=info["seeds_done"], losses=losses, device=device, stopped=info["stopped"],
                            indices=idx.tolist(), scores=summary)
        return SyntheticSet(images=images, labels=labels, lr=None, meta=meta)


def _stats(values: Tensor) -> dict[str, float]:
    v = values.detach().double().cpu()
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


DISTILLER = DataDietEL2N()
