"""Batched image augmentation on the batch's device (no per-sample Python loops, no host syncs).

* :func:`crop_flip` - the standard CIFAR training augmentation (zero-padded random crop + h-flip).
* :class:`DSA` - Differentiable Siamese Augmentation (Zhao & Bilen), "S" mode as in DC/DM/MTT:
  one op per call. ``dsa(x, seed)`` draws everything from a host generator seeded by the caller, so
  that real and synthetic batches augmented with the same seed get the same transformation (the
  distillers' siamese pairs); :meth:`DSA.sampler` is the training form: the op is chosen on the host,
  its parameters are drawn on the batch's device from the training's generator.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

from dpcore.errors import ConfigError


def _gather_window(xp: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[b, c, i, j] = xp[b, c, rows[b, i], cols[b, j]] for rows [B, H] and cols [B, W]."""
    b, c, _, wp = xp.shape
    h, w = rows.shape[1], cols.shape[1]
    out = xp.gather(2, rows[:, None, :, None].expand(b, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def crop_flip(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random crop from the zero-padded image (offsets 0..2*pad) and horizontal flip with p=0.5.

    Parameters are drawn on ``x``'s device, from ``generator`` (which should live there: then nothing is
    copied and nothing syncs) or from the global RNG. A generator on another device still works, with one
    copy of the parameters per call.
    """
    b, _, h, w = x.shape
    dev = x.device if generator is None or _same_device(generator.device, x.device) else generator.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    if dev != x.device:
        offsets, flip = offsets.to(x.device), flip.to(x.device)
    i = torch.arange(h, device=x.device)
    j = torch.arange(w, device=x.device)
    rows = i + offsets[:, :1]
    cols = torch.where(flip[:, None], w - 1 - j, j) + offsets[:, 1:]
    return _gather_window(F.pad(x, (pad, pad, pad, pad)), rows, cols)


class DSA:
    """Differentiable Siamese Augmentation with DSA's ``ParamDiffAug`` defaults.

    ``strategy`` is an underscore-joined list of ops (``color``, ``crop``, ``cutout``, ``flip``,
    ``scale``, ``rotate``), or ``"none"``. Each call applies exactly one op, chosen by the seeded
    generator. With ``batchwise=True`` (DSA's behaviour when a seed is given) one set of parameters
    is drawn and shared by every sample, so any two batches augmented with the same seed are
    transformed identically. With ``batchwise=False`` each sample gets its own parameters, drawn
    sample by sample, so the first k samples of two batches still match.
    """

    OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
    N_PARAMS = {"color": 3, "crop": 2, "cutout": 2, "flip": 1, "scale": 2, "rotate": 1}  # uniforms per op
    # ParamDiffAug defaults
    brightness, saturation, contrast = 1.0, 2.0, 0.5
    ratio_crop_pad, ratio_cutout, prob_flip = 0.125, 0.5, 0.5
    ratio_scale, ratio_rotate = 1.2, 15.0

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate", batchwise: bool = True) -> None:
        ops = () if strategy.lower() in ("", "none") else tuple(strategy.split("_"))
        bad = [op for op in ops if op not in self.OPS]
        if bad:
            raise ConfigError(f"unknown DSA op {bad[0]!r} in strategy {strategy!r}; allowed ops: {', '.join(self.OPS)}")
        self.ops = ops
        self.batchwise = batchwise

    def __repr__(self) -> str:
        return f"DSA(strategy={'_'.join(self.ops) or 'none'!r}, batchwise={self.batchwise})"

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        """Augment ``x`` with the op and parameters drawn from a host generator seeded with ``seed``.

        The same seed gives the same op and parameters on every device (and, per sample, the same
        parameters for the first k samples of any batch). On CUDA the parameters travel by one
        non-blocking copy from pinned memory (no sync)."""
        if not self.ops:
            return x
        g = torch.Generator().manual_seed(int(seed))
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=g))]
        n_params = self.N_PARAMS[op]
        u = torch.rand(1 if self.batchwise else x.shape[0], n_params, generator=g)
        if x.device.type == "cuda":
            u = u.pin_memory().to(x.device, non_blocking=True)
        u = u.expand(x.shape[0], n_params).to(device=x.device, dtype=x.dtype)
        return getattr(self, f"_{op}")(x, u).contiguous()

    def apply(self, x: Tensor, op: str, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` with ``op``, its parameters drawn on ``x``'s device from ``generator`` (which
        must live there) or the global RNG: no copy, no sync."""
        n_params = self.N_PARAMS[op]
        u = torch.rand(1 if self.batchwise else x.shape[0], n_params, generator=generator, device=x.device)
        u = u.expand(x.shape[0], n_params).to(dtype=x.dtype)
        return getattr(self, f"_{op}")(x, u).contiguous()

    def sampler(self, seed: int) -> "DSASampler":
        """An augmentation for :func:`dpcore.training.train`: each call picks one op with a host RNG seeded
        by ``seed`` (a new sampler replays the same ops) and draws its parameters from the training's
        generator on the batch's device."""
        return DSASampler(self, seed)

    # Each op gets u: [B, k] uniforms in [0, 1) and must stay differentiable w.r.t. x.
    def _color(self, x: Tensor, u: Tensor) -> Tensor:
        r = u[:, :, None, None, None]  # [B, 3, 1, 1, 1]
        x = x + (r[:, 0] - 0.5) * self.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (r[:, 1] * self.saturation) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (r[:, 2] + self.contrast) + m

    def _crop(self, x: Tensor, u: Tensor) -> Tensor:
        """Translate by an integer shift in [-s, s] per axis (s = ratio * size, rounded), zero fill."""
        _, _, h, w = x.shape
        sh, sw = int(h * self.ratio_crop_pad + 0.5), int(w * self.ratio_crop_pad + 0.5)
        s = max(sh, sw)
        dy = (u[:, 0] * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
        dx = (u[:, 1] * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
        rows = torch.arange(h, device=x.device) + dy[:, None] + s
        cols = torch.arange(w, device=x.device) + dx[:, None] + s
        return _gather_window(F.pad(x, (s, s, s, s)), rows, cols)

    def _cutout(self, x: Tensor, u: Tensor) -> Tensor:
        """Zero a (ratio*H) x (ratio*W) square centred at a random position (clipped at borders)."""
        _, _, h, w = x.shape
        ch, cw = int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)
        nh, nw = h + 1 - ch % 2, w + 1 - cw % 2  # DSA's range of centre positions
        top = (u[:, 0] * nh).long().clamp(max=nh - 1) - ch // 2
        left = (u[:, 1] * nw).long().clamp(max=nw - 1) - cw // 2
        i = torch.arange(h, device=x.device)
        j = torch.arange(w, device=x.device)
        in_rows = (i >= top[:, None]) & (i < top[:, None] + ch)  # [B, H]
        in_cols = (j >= left[:, None]) & (j < left[:, None] + cw)  # [B, W]
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)

    def _flip(self, x: Tensor, u: Tensor) -> Tensor:
        return torch.where(u[:, 0, None, None, None] < self.prob_flip, x.flip(3), x)

    def _affine(self, x: Tensor, theta: Tensor) -> Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x: Tensor, u: Tensor) -> Tensor:
        lo, hi = 1.0 / self.ratio_scale, self.ratio_scale
        s = u * (hi - lo) + lo  # [B, 2]: (sx, sy)
        zero = torch.zeros_like(s[:, 0])
        theta = torch.stack([s[:, 0], zero, zero, zero, s[:, 1], zero], dim=1).view(-1, 2, 3)
        return self._affine(x, theta)

    def _rotate(self, x: Tensor, u: Tensor) -> Tensor:
        a = (u[:, 0] - 0.5) * 2 * self.ratio_rotate / 180 * math.pi
        cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
        theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(-1, 2, 3)
        return self._affine(x, theta)


class DSASampler:
    """``aug(x, generator)``: DSA as :func:`dpcore.training.train` calls it. Each call's op comes from a host RNG
    seeded once (no tensor, no sync), its parameters from ``generator`` on the batch's device. The two halves
    are apart for a loop that must know the op before the step (one CUDA graph per op, :mod:`dpcore.graphed`):
    ``apply(x, next_op(), generator)`` is a call."""

    def __init__(self, dsa: DSA, seed: int) -> None:
        self.dsa = dsa
        self._ops = random.Random(int(seed))

    def next_op(self) -> str | None:
        return self.dsa.ops[self._ops.randrange(len(self.dsa.ops))] if self.dsa.ops else None

    def apply(self, x: Tensor, op: str | None, generator: torch.Generator) -> Tensor:
        return x if op is None else self.dsa.apply(x, op, generator)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.next_op(), generator)
