"""ZCA whitening with the conventions of kornia's ``ZCAWhitening`` as used by MTT.

MTT fits ``kornia.enhance.ZCAWhitening(eps=0.1)`` on the [0, 1]-scaled training images
(no mean/std normalisation) and applies it to train and test. kornia flattens each image to a
row, subtracts the per-feature mean, takes the unbiased covariance ``Xc^T Xc / (N - 1)``,
decomposes it (SVD; for a symmetric PSD matrix that equals the eigendecomposition) and builds
``T = U diag(1 / sqrt(S + eps)) U^T``; the whitened data is ``(x - mean) @ T``.

Here the covariance is accumulated in float64 over chunks of rows (so 50k x 3072 CIFAR needs no
float copy of the whole set), decomposed with ``eigh`` in float64, and the transform is stored
and applied in float32 like kornia.

:meth:`ZCA.fit_cached` fits once per training set: on a GPU when there is one (the 3072 x 3072 float64
``eigh`` takes seconds on a CPU core), kept for the process and on disk (``$DPTUI_CACHE_DIR``, default
``~/.cache/dptui``, ``zca/<hash of the images and eps>.pt``), so every run, worker process and dashboard launch
after the first reads it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dpcore.errors import DataError

__all__ = ["ZCA", "MTT_ZCA_EPS", "zca_cache_dir"]

MTT_ZCA_EPS = 0.1
CACHE_ENV = "DPTUI_CACHE_DIR"
_FITTED: dict[str, "ZCA"] = {}  # this process's fits, by key


def zca_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dptui") / "zca"


def _key(x: Tensor, eps: float) -> str:
    digest = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|{eps!r}|".encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _rows01(x: Tensor, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Rows ``start:stop`` of the flattened ``x`` on the [0, 1] scale (uint8 is divided by 255)."""
    rows = x[start:stop].reshape(stop - start, -1)
    if rows.dtype == torch.uint8:
        return rows.to(torch.float32).div_(255.0).to(dtype)
    return rows.to(dtype)


@dataclass(frozen=True)
class ZCA:
    """A fitted ZCA whitening: ``whitened = (x.flatten(1) - mean) @ transform``.

    ``mean`` is float32 [1, D], ``transform`` and ``transform_inv`` float32 [D, D], ``shape`` the
    per-sample shape it was fitted on.
    """

    mean: Tensor
    transform: Tensor
    transform_inv: Tensor
    shape: tuple[int, ...]
    eps: float = MTT_ZCA_EPS

    @classmethod
    def fit(cls, x01: Tensor, eps: float = MTT_ZCA_EPS, *, chunk: int = 4096) -> "ZCA":
        """Fit on images ``x01`` [N, ...] in [0, 1] (float) or uint8 0..255 (scaled by 1/255).

        Computes on ``x01``'s device.
        """
        if x01.ndim < 2 or x01.shape[0] < 2:
            raise DataError(
                f"ZCA fit needs at least 2 samples shaped [N, ...], got shape {tuple(x01.shape)}; "
                "fit it on the training images"
            )
        n = x01.shape[0]
        d = x01[0].numel()
        device = x01.device
        total = torch.zeros(1, d, dtype=torch.float64, device=device)
        for s in range(0, n, chunk):
            total += _rows01(x01, s, min(s + chunk, n), torch.float64).sum(0, keepdim=True)
        mean64 = total / n
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for s in range(0, n, chunk):
            centered = _rows01(x01, s, min(s + chunk, n), torch.float64) - mean64
            cov.addmm_(centered.T, centered)
        cov /= n - 1
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0)  # round-off can leave tiny negatives; SVD would give |.|
        transform = (evecs * torch.rsqrt(evals + eps)) @ evecs.T
        transform_inv = (evecs * torch.sqrt(evals + eps)) @ evecs.T
        return cls(
            mean=mean64.to(torch.float32),
            transform=transform.to(torch.float32),
            transform_inv=transform_inv.to(torch.float32),
            shape=tuple(x01.shape[1:]),
            eps=float(eps),
        )

    @classmethod
    def fit_cached(cls, x01: Tensor, eps: float = MTT_ZCA_EPS) -> "ZCA":
        """:meth:`fit`, once per training set: from this process's fits, else the disk cache, else fitted (on
        CUDA when available) and saved there. Returned on the CPU, like :meth:`fit` of CPU images."""
        from dpcore.safe_load import safe_torch_load
        from dpcore.store import atomic_torch_save

        key = _key(x01, eps)
        if key in _FITTED:
            return _FITTED[key]
        path = zca_cache_dir() / f"{key}.pt"
        zca = None
        if path.is_file():
            try:
                d = safe_torch_load(path)
                zca = cls(d["mean"], d["transform"], d["transform_inv"], tuple(d["shape"]), float(d["eps"]))
            except (DataError, KeyError, TypeError, ValueError):
                zca = None  # unreadable: fit again and replace it
        if zca is None:
            on = torch.device("cuda") if torch.cuda.is_available() else x01.device
            zca = cls.fit(x01.to(on), eps).to("cpu")
            try:
                atomic_torch_save(path, {"mean": zca.mean, "transform": zca.transform,
                                         "transform_inv": zca.transform_inv, "shape": list(zca.shape), "eps": zca.eps})
            except OSError:
                pass  # a read-only home: the fit is kept for this process only
        _FITTED[key] = zca
        return zca

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise DataError(
                f"ZCA was fitted on samples shaped {self.shape} but got {tuple(x.shape[1:])}; "
                "whiten data of the dataset it was fitted on"
            )

    def __call__(self, x01: Tensor, *, chunk: int = 8192) -> Tensor:
        """Whiten ``x01`` [N, ...] ([0, 1] floats or uint8); float32 of the same shape on ``x01``'s device."""
        self._check(x01)
        n = x01.shape[0]
        mean = self.mean.to(x01.device)
        transform = self.transform.to(x01.device)
        out = torch.empty(n, transform.shape[1], dtype=torch.float32, device=x01.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            torch.mm(_rows01(x01, s, e, torch.float32) - mean, transform, out=out[s:e])
        return out.view(x01.shape)

    def inverse(self, z: Tensor) -> Tensor:
        """Map whitened ``z`` back to the [0, 1] image scale (float32, same shape)."""
        self._check(z)
        flat = z.reshape(z.shape[0], -1).to(torch.float32)
        inv = self.transform_inv.to(z.device)
        return (flat @ inv + self.mean.to(z.device)).view(z.shape)

    def to(self, device: torch.device | str) -> "ZCA":
        return ZCA(
            mean=self.mean.to(device),
            transform=self.transform.to(device),
            transform_inv=self.transform_inv.to(device),
            shape=self.shape,
            eps=self.eps,
        )
