"""Distribution Matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", 2023).

Each iteration samples a freshly initialised (untrained) network, embeds a real batch of every
class and all synthetic images, and moves the synthetic images so that each class's mean
embedding matches the real one: loss = sum_c ||mean(emb_real_c) - mean(emb_syn_c)||^2.

Vectorised over classes: one gather of the stacked real batch (class-major), one augmentation
call and one (chunked) ``embed`` pass for it, one for all synthetic images, and group means by
index ops. With DSA on, real and synthetic batches get the same augmentation seed (siamese: DSA's
default batchwise mode transforms both identically). The real batch is also laid out so that its
first ``C * ipc`` images line up (same class) with the synthetic images, so the pairing stays
siamese even with per-sample augmentation parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from dpcore.errors import ConfigError, DataError
from dpcore.synthetic.base import (
    ProgressFn,
    StopFn,
    SyntheticSet,
    Timer,
    check_ipc,
    check_positive,
    class_sorted_index,
    model_from_spec,
    resolve_params,
    take_per_class,
)

# Real images embedded per forward pass, as input elements (keeps activation memory bounded
# for large batch_real x num_classes, e.g. CIFAR-100: 100 x 256 images).
_REAL_CHUNK_ELEMS = 1 << 22
_MAX_CURVE_POINTS = 500


def _derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (seed, iteration, purpose)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class DistributionMatching:
    name = "dm"
    defaults: dict[str, Any] = {
        "iterations": 1000,
        "lr_img": 1.0,
        "batch_real": 256,
        "dsa": True,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "embedder": "",  # "" = the profile's model; else e.g. "convnet:width=32" (see base.model_from_spec)
    }

    def distill(
        self,
        dataset,
        *,
        ipc: int,
        model_factory: Callable[[], nn.Module],
        seed: int,
        device: torch.device | str,
        params: dict[str, Any],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> SyntheticSet:
        p = resolve_params(self.name, self.defaults, params)
        check_positive(self.name, p, "iterations", "lr_img", "batch_real")
        counts = check_ipc(dataset, ipc, self.name)
        device = torch.device(device)
        timer = Timer(device)
        model_factory = model_from_spec(self.name, p["embedder"], dataset, model_factory, device)
        C = dataset.num_classes
        total = p["iterations"]

        augment = None
        if p["dsa"]:
            from dpcore.augment import DSA  # imported lazily: only needed with dsa on

            augment = DSA(strategy=p["dsa_strategy"])

        y_cpu = dataset.y_train.detach().cpu()
        gen = torch.Generator().manual_seed(int(seed))

        def real_batch(idx: Tensor) -> Tensor:
            x = dataset.x_train[idx.to(dataset.x_train.device)]
            return dataset.prepare(x).to(device, torch.float32)

        # Initialise from random real images of each class (class-major, ipc per class).
        order, starts, _ = class_sorted_index(y_cpu, C, gen)
        init_idx, labels = take_per_class(order, starts, torch.full((C,), ipc, dtype=torch.long))
        images = real_batch(init_idx).detach().clone().requires_grad_(True)
        labels = labels.to(torch.int64)
        lr_img, momentum = p["lr_img"], 0.5  # SGD with momentum on the images (torch.optim.SGD semantics)
        velocity: Tensor | None = None

        # Per-class real batch sizes; the first `paired` of each class are put first (class-major)
        # so they line up with the synthetic images under the shared augmentation seed.
        take = counts.clamp(max=p["batch_real"])
        paired = min(ipc, int(take.min()))
        real_cls = torch.cat(
            [
                torch.repeat_interleave(torch.arange(C), torch.full((C,), paired, dtype=torch.long)),
                torch.repeat_interleave(torch.arange(C), take - paired),
            ]
        ).to(device)
        inv_take = (1.0 / take.to(torch.float32)).to(device).unsqueeze(1)
        chunk = max(1, _REAL_CHUNK_ELEMS // max(1, math.prod(dataset.shape)))

        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
            device.type == "cuda"
        ) else []
        losses = torch.zeros(total, device=device)
        report_every = max(1, total // 200)
        if progress is not None:
            progress(0, total, None)

        done = 0
        stopped = False
        for it in range(total):
            if should_stop is not None and should_stop():
                stopped = True
                break
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(_derive_seed(seed, it, 1))
                net = model_factory()
            net = net.to(device)
            net.train()
            for q in net.parameters():
                q.requires_grad_(False)
            if not hasattr(net, "embed"):
                raise ConfigError(
                    f"synthetic method 'dm': model {type(net).__name__} has no embed(); use a model from dpcore.models"
                )
            aug_seed = _derive_seed(seed, it, 2)

            order, starts, _ = class_sorted_index(y_cpu, C, gen)
            front, _ = take_per_class(order, starts, torch.full((C,), paired, dtype=torch.long))
            rest, _ = take_per_class(order, starts, take - paired, first=paired)
            with torch.no_grad():
                xr = real_batch(torch.cat([front, rest]))
                if augment is not None:
                    xr = augment(xr, seed=aug_seed)
                emb_real = torch.cat([net.embed(part).flatten(1) for part in xr.split(chunk)])
                mean_real = torch.zeros(C, emb_real.shape[1], device=device, dtype=emb_real.dtype)
                mean_real.index_add_(0, real_cls, emb_real).mul_(inv_take)

            xs = augment(images, seed=aug_seed) if augment is not None else images
            emb_syn = net.embed(xs).flatten(1)
            mean_syn = emb_syn.view(C, ipc, -1).mean(dim=1)  # images are class-major, ipc each
            loss = (mean_real - mean_syn).pow(2).sum()

            (grad,) = torch.autograd.grad(loss, images)
            with torch.no_grad():
                velocity = grad if velocity is None else velocity.mul_(momentum).add_(grad)
                images.sub_(velocity, alpha=lr_img)
            losses[it] = loss.detach()
            done = it + 1
            if done % report_every == 0 or done == total:  # a sync every total/200 iterations
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise DataError(f"synthetic method 'dm': the matching loss became {value} by iteration {done}; "
                                    f"lower lr_img (now {lr_img:g})")
                if progress is not None:
                    progress(done, total, value)

        hist = losses[:done].cpu()
        stride = max(1, math.ceil(done / _MAX_CURVE_POINTS))
        curve = [[i + 1, float(hist[i])] for i in range(0, done, stride)]
        if done and curve[-1][0] != done:
            curve.append([done, float(hist[done - 1])])
        meta: dict[str, Any] = {
            "method": self.name,
            "dataset": dataset.name,
            "whitened": bool(dataset.whitened),
            "ipc": ipc,
            "seed": int(seed),
            "params": p,
            "distill_s": timer.elapsed(),
            "iterations_done": done,
            "final_loss": float(hist[-1]) if done else None,
            "loss_curve": curve,
            "init_indices": init_idx.tolist(),
            "device": str(device),
        }
        if stopped:
            meta["stopped"] = True
        return SyntheticSet(images=images.detach().cpu().clone(), labels=labels, lr=None, meta=meta)


DISTILLER = DistributionMatching()
