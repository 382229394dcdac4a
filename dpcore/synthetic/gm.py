"""Gradient matching with DSA (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
ICLR 2021; Zhao & Bilen, "... with Differentiable Siamese Augmentation", ICML 2021).

Every iteration takes a freshly initialised network and alternates ``outer_loop`` times:

(a) for every class c, the gradient of the loss w.r.t. the network's parameters on a real batch of
    class c (``batch_real`` random images, or the smallest class's size if that is smaller) and on
    the synthetic images of class c are compared with DC's layer-wise distance, sum over output nodes
    of 1 − cos(g_real, g_syn) (biases and other 1-D parameters do not count); the summed distance
    moves the images (SGD, ``lr_img``, momentum 0.5, one optimiser for the whole run);
(b) except after the last outer step, ``inner_loop`` epochs of plain SGD (``lr_net``, minibatches of
    ``batch_train`` in a fresh random order every epoch) of the network on the synthetic set.

With ``dsa`` on: in (a) every class gets its own seed at every outer step, and its real batch and
its synthetic images both go through the batchwise DSA with that seed, so within a class every
real and synthetic image gets the same op with the same parameters (siamese); in (b) every
minibatch goes through per-sample DSA (each image its own parameters) with its own seed. With
``dsa`` off nothing is augmented.

The per-class gradients are computed for all classes at once (``torch.func.vmap`` of ``grad`` over
classes, in chunks), not class by class. BatchNorm layers use batch statistics (no running stats).
``outer_loop``/``inner_loop`` default to DC's values for the ipc (nearest ipc row).
The real batches and minibatch orders are drawn on the device and the losses stay there (read
only at the ~200 progress events): no step waits for the host.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.dsa import make_dsa
from dpcore.synthetic.meta import distill_meta
from dpcore.synthetic.params import check_ipc, check_positive, resolve_params
from dpcore.synthetic.rng import seeded_model
from dpcore.synthetic.sampling import ClassSampler, RealImages, initial_images
from dpcore.synthetic.set import SyntheticSet
from dpcore.training import Stopwatch, derive_seed, device_generator

# ipc -> (outer_loop, inner_loop), DC's get_loops.
LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
_CHUNK_ELEMS = 1 << 21  # real input elements per vmapped gradient pass (bounds activation memory)
_PROGRESS_EVENTS = 200

DEFAULTS: dict[str, Any] = {
    "iterations": 1000,
    "outer_loop": 10,
    "inner_loop": 50,
    "lr_img": 0.1,
    "lr_net": 0.01,
    "batch_real": 256,
    "batch_train": 256,
    "dsa": True,
    "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
}


def loops_for(ipc: int) -> tuple[int, int]:
    nearest = min(LOOPS, key=lambda i: (abs(math.log(max(ipc, 1) / i)), i))
    return LOOPS[nearest]


def match_distance(g_real: dict[str, Tensor], g_syn: dict[str, Tensor]) -> Tensor:
    """DC's distance summed over classes: per layer with >= 2-D weights, sum over output nodes of
    1 - cos between the real and synthetic gradients. Tensors are [classes, *param shape]."""
    total = None
    for name, gr in g_real.items():
        if gr.dim() < 3:  # a 1-D parameter (bias, norm scale) per class: DC ignores it
            continue
        c, out = gr.shape[0], gr.shape[1]
        a = gr.reshape(c, out, -1)
        b = g_syn[name].reshape(c, out, -1)
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
        d = (1.0 - cos).sum()
        total = d if total is None else total + d
    if total is None:
        raise ValueError("gradient matching needs a model with at least one 2-D (or larger) weight")
    return total


class GradientMatching:
    name = "gm"
    defaults: dict[str, Any] = DEFAULTS

    def resolve(self, dataset_name: str, ipc: int, params: dict[str, Any] | None) -> dict[str, Any]:
        outer, inner = loops_for(ipc)
        return resolve_params(self.name, {**DEFAULTS, "outer_loop": outer, "inner_loop": inner}, params)

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
        p = self.resolve(dataset.name, ipc, params)
        check_positive(self.name, p, "iterations", "outer_loop", "inner_loop", "lr_img", "lr_net", "batch_real",
                       "batch_train")
        counts = check_ipc(dataset, ipc, self.name)
        device = torch.device(device)
        watch = Stopwatch(device)
        C = dataset.num_classes
        shape = tuple(dataset.shape)
        total = p["iterations"]
        dsa_pair = make_dsa(p["dsa"], p["dsa_strategy"])  # batchwise: same seed, same transform
        dsa_sample = make_dsa(p["dsa"], p["dsa_strategy"], batchwise=False)

        images, labels, init_idx = initial_images(dataset, ipc, seed, device)
        images.requires_grad_(True)
        y_syn = labels.to(device)
        opt_img = torch.optim.SGD([images], lr=p["lr_img"], momentum=0.5)

        B = int(min(p["batch_real"], int(counts.min())))
        sampler = ClassSampler(dataset.y_train, C, torch.full((C,), B, dtype=torch.long), device)
        gen = device_generator(device, derive_seed(seed, "gm-draws"))
        real = RealImages(dataset, device)

        def real_batch() -> Tensor:
            return real[sampler.draw(gen)].view(C, B, *shape)

        chunk = max(1, _CHUNK_ELEMS // (B * math.prod(shape)))
        y_real = torch.arange(C, device=device)[:, None].expand(C, B)
        y_syn_c = y_syn.view(C, ipc)
        n = C * ipc
        batch_train = min(p["batch_train"], n)

        losses = torch.zeros(total, device=device)
        report_every = max(1, total // _PROGRESS_EVENTS)
        if progress is not None:
            progress(0, total, None)
        done, stopped = 0, False
        for it in range(total):
            if should_stop is not None and should_stop():
                stopped = True
                break
            net = seeded_model(model_factory, derive_seed(seed, "gm-net", it), device)
            replace_all_batch_norm_modules_(net)
            net.train()
            opt_net = torch.optim.SGD(net.parameters(), lr=p["lr_net"])

            def ce(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
                return F.cross_entropy(functional_call(net, params, (x,)), y)

            per_class_grad = vmap(grad(ce), in_dims=(None, 0, 0))
            it_loss = torch.zeros((), device=device)
            for ol in range(p["outer_loop"]):
                params_now = {k: v.detach() for k, v in net.named_parameters()}
                xr = real_batch()
                xs = images.view(C, ipc, *shape)
                if dsa_pair is not None:  # one seed per class, shared by the real and synthetic batch
                    seeds = [derive_seed(seed, "gm-aug", it, ol, c) for c in range(C)]
                    with torch.no_grad():
                        xr = torch.stack([dsa_pair(xr[c], seed=s) for c, s in enumerate(seeds)])
                    xs = torch.stack([dsa_pair(xs[c], seed=s) for c, s in enumerate(seeds)])
                loss = None
                for c0 in range(0, C, chunk):
                    sl = slice(c0, min(C, c0 + chunk))
                    with torch.no_grad():
                        g_real = per_class_grad(params_now, xr[sl], y_real[sl])
                    g_syn = per_class_grad(params_now, xs[sl], y_syn_c[sl])
                    d = match_distance(g_real, g_syn)
                    loss = d if loss is None else loss + d
                opt_img.zero_grad(set_to_none=True)
                loss.backward()
                opt_img.step()
                it_loss += loss.detach()
                if ol == p["outer_loop"] - 1:
                    break
                x_train = images.detach()
                for epoch in range(p["inner_loop"]):
                    order = torch.randperm(n, generator=gen, device=device)
                    for j, b in enumerate(order.split(batch_train)):
                        xb = x_train[b]
                        if dsa_sample is not None:
                            xb = dsa_sample(xb, seed=derive_seed(seed, "gm-train", it, ol, epoch, j))
                        loss_net = F.cross_entropy(net(xb), y_syn[b])
                        opt_net.zero_grad(set_to_none=True)
                        loss_net.backward()
                        opt_net.step()
            losses[it] = it_loss / (p["outer_loop"] * C)
            done = it + 1
            if progress is not None and (done % report_every == 0 or done == total):  # ~200 host reads per run
                progress(done, total, float(losses[it]))

        meta = distill_meta(self.name, dataset, ipc=ipc, seed=seed, params=p, distill_s=watch.elapsed(), done=done,
                            losses=losses, device=device, stopped=stopped, init_indices=init_idx.tolist())
        return SyntheticSet(images=images.detach().cpu().clone(), labels=labels, lr=None, meta=meta)


DISTILLER = GradientMatching()
