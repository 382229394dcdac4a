"""Weight distributions of masks (the paper's appendix B, after Paganini & Forde 2020).

- Histograms of the initial values (theta_0) of the surviving weights, per layer and round, on fixed
  per-layer bins (symmetric, covering every initial weight of the layer), so rounds and methods that
  share an initialisation are comparable bin for bin.
- Per-layer Jaccard overlap of two masks (surviving weights), with the value two independent random
  masks of the same per-layer densities would have in expectation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import Mask

NEAR_ZERO = 0.5  # "near zero" = |w0| < NEAR_ZERO x the std of the layer's initial weights


def layer_edges(init: dict[str, Tensor], names: list[str], bins: int) -> dict[str, Tensor]:
    """Symmetric bins [-m, m], m = the largest |initial weight| of the layer (each layer its own)."""
    edges = {}
    for name in names:
        m = float(init[name].detach().abs().max()) or 1.0
        edges[name] = torch.linspace(-m, m, bins + 1, dtype=torch.float64)
    return edges


def _hist(values: Tensor, edges: Tensor) -> list[int]:
    if values.numel() == 0:
        return [0] * (edges.numel() - 1)
    counts = torch.histogram(values.double(), bins=edges).hist  # last bin includes its right edge
    return [int(c) for c in counts]


def layer_histogram(w0: Tensor, keep: Tensor, edges: Tensor) -> dict:
    """Histogram and summary numbers of the initial values ``w0`` where ``keep`` is True."""
    w0 = w0.detach().flatten().double().cpu()
    kept = w0[keep.flatten().cpu()]
    std = float(w0.std()) if w0.numel() > 1 else 0.0
    near = (kept.abs() < NEAR_ZERO * std).double()
    return {
        "counts": _hist(kept, edges), "kept": int(kept.numel()), "total": int(w0.numel()),
        "near_zero": float(near.mean()) if kept.numel() else None,  # fraction of survivors
        "mean_abs": float(kept.abs().mean()) if kept.numel() else None,
    }


def weight_histograms(init: dict[str, Tensor], masks: dict[int, Mask], sparsities: dict[int, float],
                      bins: int = 40) -> dict:
    """``results.json["weight_histograms"]``: per layer the bins and the dense histogram, per round the survivors'."""
    names = list(next(iter(masks.values()))) if masks else []
    edges = layer_edges(init, names, bins)
    layers = {}
    for name in names:
        dense = layer_histogram(init[name], torch.ones_like(init[name], dtype=torch.bool), edges[name])
        layers[name] = {"edges": [float(e) for e in edges[name]], "all": dense["counts"],
                        "std": float(init[name].detach().double().std()), "near_zero_all": dense["near_zero"],
                        "mean_abs_all": dense["mean_abs"]}
    rounds = []
    for r in sorted(masks):
        rounds.append({"round": r, "sparsity": sparsities[r],
                       "layers": {n: layer_histogram(init[n], masks[r][n], edges[n]) for n in names}})
    return {"source": "init", "bins": bins, "near_zero": NEAR_ZERO, "layers": layers, "rounds": rounds}


def jaccard(a: Mask, b: Mask) -> dict[str, float]:
    """|A and B| / |A or B| of the surviving weights, per layer and over all layers ("all").

    Two masks with no survivors at all in a layer count as identical there (1.0).
    """
    out, inter_all, union_all = {}, 0, 0
    for name in a:
        ma, mb = a[name].bool().cpu(), b[name].bool().cpu()
        inter, union = int((ma & mb).sum()), int((ma | mb).sum())
        out[name] = inter / union if union else 1.0
        inter_all, union_all = inter_all + inter, union_all + union
    out["all"] = inter_all / union_all if union_all else 1.0
    return out


def random_jaccard(a: Mask, b: Mask) -> dict[str, float]:
    """The expected Jaccard of two independent random masks with the densities of ``a`` and ``b`` per layer."""
    out, inter_all, union_all = {}, 0.0, 0.0
    for name in a:
        n = a[name].numel()
        p, q = int(a[name].sum()) / n, int(b[name].sum()) / n
        union = p + q - p * q
        out[name] = p * q / union if union else 1.0
        inter_all, union_all = inter_all + n * p * q, union_all + n * union
    out["all"] = inter_all / union_all if union_all else 1.0
    return out
