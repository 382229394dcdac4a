"""Distribution Matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", 2023).

Each iteration samples a freshly initialised (untrained) network, embeds a real batch of every
class and all synthetic images, and moves the synthetic images so that each class's mean
embedding matches the real one: loss = sum_c ||mean(emb_real_c) - mean(emb_syn_c)||^2.

With DSA on, real and synthetic images are augmented siamese: one batchwise DSA call per
iteration's seed, so one op and one parameter set shared by every real and synthetic image.

Nothing in an iteration waits for the host: the real images are prepared (normalised) once, the
real batch (``batch_real`` random images of each class, class-major) is drawn on the device by a
device generator from per-class index tensors built once, the network is built on the device,
and the losses stay in a device tensor that is read only at the ~200 progress events (where the
divergence check is made too).

The mean real embedding needs no gradient, so it is computed as cheaply as it exactly can be:
when the embedder starts with ``Flatten`` then ``Linear`` (e.g. LeNet-300-100) and has fewer first-layer
units than the real batch has images, the augmentation is folded into that layer. Every DSA op is
affine in the image, aug(x) = J x + aug(0), the same map for every image of a batchwise call, so
W aug(x) + b = (W J) x + (W aug(0) + b); ``W J`` is the augmentation's adjoint applied to W's rows
(one backward pass of DSA on as many "images" as the layer has units) and the real images are never
augmented themselves. Pixels constant over the whole train split (MNIST's blank border) are left out
of the product, their share added to the bias. Other embedders augment the real batch and embed it in
chunks. At the quickstart's settings (embedded MNIST, LeNet-300-100, 10 ipc, batch_real 256, DSA) on
2 CPU cores an iteration takes ~14.5 ms, against ~23 ms when the real batch was augmented and
embedded as such (and sampled on the host); the set reaches the same accuracy (~91%).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dpcore.errors import ConfigError, DataError
from dpcore.models import Net
from dpcore.synthetic.distiller import ProgressFn, StopFn
from dpcore.synthetic.dsa import SeededDSA, make_dsa
from dpcore.synthetic.meta import distill_meta
from dpcore.synthetic.model_spec import model_from_spec
from dpcore.synthetic.params import check_ipc, check_positive, resolve_params
from dpcore.synthetic.rng import seeded_model
from dpcore.synthetic.sampling import ClassSampler, RealImages, initial_images
from dpcore.synthetic.set import SyntheticSet
from dpcore.training import Stopwatch, derive_seed, device_generator

# Real images embedded per forward pass, as input elements (keeps activation memory bounded
# for large batch_real x num_classes, e.g. CIFAR-100: 100 x 256 images).
_REAL_CHUNK_ELEMS = 1 << 22
_PROGRESS_EVENTS = 200


def linear_front(net: nn.Module) -> tuple[nn.Linear, nn.Module] | None:
    """(first layer, the rest) when ``net.embed(x)`` is ``rest(first(x.flatten(1)))``, else None."""
    if not isinstance(net, Net) or type(net).embed is not Net.embed:
        return None
    f = net.features
    if (isinstance(f, nn.Sequential) and len(f) >= 2 and type(f[0]) is nn.Flatten and f[0].start_dim == 1
            and f[0].end_dim == -1 and type(f[1]) is nn.Linear):
        return f[1], f[2:]
    return None


def folded_first_layer(first: nn.Linear, augment: SeededDSA, seed: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``first`` applied after the batchwise augmentation of ``seed``:
    ``first(aug(x).flatten(1)) == x.flatten(1) @ weight.T + bias`` for every image x."""
    w = first.weight.detach()
    z = torch.zeros((w.shape[0], *shape), device=w.device, dtype=w.dtype, requires_grad=True)
    with torch.enable_grad():
        out = augment(z, seed=seed)  # one "image" per unit; out[0] = aug(0), the affine offset
        (wj,) = torch.autograd.grad(out, z, grad_outputs=w.view_as(z))  # the rows of W J
    offset = out[0].detach().flatten()
    bias = w @ offset if first.bias is None else torch.addmv(first.bias.detach(), w, offset)
    return wj.flatten(1), bias


class RealMeans:
    """Every class's mean embedding of a fresh random real batch (``take[c]`` images of class c):
    ``means(net, aug_seed)`` -> [classes, embedding], no gradient, nothing read to the host.

    ``fold`` (default: when it is exact and cheaper, see the module docstring) folds the batchwise
    augmentation into the embedder's first ``Linear``; it also drops the pixels that are constant over
    the whole train split (e.g. MNIST's blank border: their contribution is the same for every image,
    so it goes into the bias), and computes the layer as ``W x^T`` (the faster layout for MKL).
    """

    def __init__(self, dataset, take: Tensor, device: torch.device, augment: SeededDSA | None, seed: int,
                 probe: nn.Module, fold: bool | None = None) -> None:
        self.real = RealImages(dataset, device)
        self.sampler = ClassSampler(dataset.y_train, dataset.num_classes, take, device)
        self.gen = device_generator(device, derive_seed(seed, "dm-real"))
        self.augment, self.shape, self.num_classes = augment, tuple(dataset.shape), dataset.num_classes
        self.inv_take = (1.0 / take.to(torch.float32)).to(device).unsqueeze(1)
        self.chunk = max(1, _REAL_CHUNK_ELEMS // max(1, math.prod(self.shape)))
        front = linear_front(probe)
        can_fold = augment is not None and self.real.prepared and front is not None
        self.fold = (can_fold and front[0].out_features < len(self.sampler)) if fold is None else fold
        if self.fold and not can_fold:
            raise ValueError("cannot fold: needs DSA, a Flatten-then-Linear embedder and the prepared train split")
        if self.fold:
            flat = self.real.x.flatten(1)
            varying = (flat != flat[:1]).any(0)
            self.keep = varying.nonzero().flatten()
            self.const = (~varying).nonzero().flatten()
            self.const_values = flat[0, self.const]
            self.pool = flat if self.const.numel() == 0 else flat.index_select(1, self.keep)

    @torch.no_grad()
    def __call__(self, net: nn.Module, aug_seed: int) -> Tensor:
        idx = self.sampler.draw(self.gen)
        if self.fold:
            first, rest = linear_front(net)
            weight, bias = folded_first_layer(first, self.augment, aug_seed, self.shape)
            if self.const.numel():
                bias = torch.addmv(bias, weight.index_select(1, self.const), self.const_values)
                weight = weight.index_select(1, self.keep)
            bias = bias[:, None]
            xr = self.pool.index_select(0, idx)
            parts = [rest(torch.addmm(bias, weight, part.t()).t()) for part in xr.split(self.chunk)]
        else:
            xr = self.real[idx]
            if self.augment is not None:
                xr = self.augment(xr, seed=aug_seed)
            parts = [net.embed(part) for part in xr.split(self.chunk)]
        emb = parts[0].flatten(1) if len(parts) == 1 else torch.cat([part.flatten(1) for part in parts])
        mean = torch.zeros(self.num_classes, emb.shape[1], device=emb.device, dtype=emb.dtype)
        return mean.index_add_(0, self.sampler.classes, emb).mul_(self.inv_take)


class DistributionMatching:
    name = "dm"
    defaults: dict[str, Any] = {
        "iterations": 1000,
        "lr_img": 1.0,
        "batch_real": 256,
        "dsa": True,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "embedder": "",  # "" = the profile's model; else e.g. "convnet:width=32" (see model_spec.model_from_spec)
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
        watch = Stopwatch(device)
        model_factory = model_from_spec(self.name, p["embedder"], dataset, model_factory, device)
        C = dataset.num_classes
        total = p["iterations"]
        augment = make_dsa(p["dsa"], p["dsa_strategy"])  # batchwise: siamese real / synthetic

        images, labels, init_idx = initial_images(dataset, ipc, seed, device)
        images.requires_grad_(True)
        lr_img, momentum = p["lr_img"], 0.5  # SGD with momentum on the images (torch.optim.SGD semantics)
        velocity: Tensor | None = None

        # The real data, once: the train split prepared on the device and a sampler of
        # min(batch_real, class size) images of every class.
        probe = seeded_model(model_factory, derive_seed(seed, "dm-probe"), device)
        real_means = RealMeans(dataset, counts.clamp(max=p["batch_real"]), device, augment, seed, probe)
        del probe

        losses = torch.zeros(total, device=device)
        report_every = max(1, total // _PROGRESS_EVENTS)
        if progress is not None:
            progress(0, total, None)

        done = 0
        stopped = False
        for it in range(total):
            if should_stop is not None and should_stop():
                stopped = True
                break
            net = seeded_model(model_factory, derive_seed(seed, "dm-net", it), device)
            if not hasattr(net, "embed"):
                raise ConfigError(
                    f"synthetic method 'dm': model {type(net).__name__} has no embed(); use a model from dpcore.models"
                )
            net.train()
            for q in net.parameters():
                q.requires_grad_(False)
            aug_seed = derive_seed(seed, "dm-aug", it)

            mean_real = real_means(net, aug_seed)
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
            if done % report_every == 0 or done == total:  # the only host reads: ~200 per run
                value = float(losses[it])
                if not math.isfinite(value):
                    raise DataError(f"synthetic method 'dm': the matching loss became {value} by iteration {done}; "
                                    f"lower lr_img (now {lr_img:g})")
                if progress is not None:
                    progress(done, total, value)

        meta = distill_meta(self.name, dataset, ipc=ipc, seed=seed, params=p, distill_s=watch.elapsed(), done=done,
                            losses=losses, device=device, stopped=stopped, init_indices=init_idx.tolist())
        return SyntheticSet(images=images.detach().cpu().clone(), labels=labels, lr=None, meta=meta)


DISTILLER = DistributionMatching()
