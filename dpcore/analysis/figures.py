"""Publication figures from runs' results (:class:`~dpcore.results.RunResults`): PNG (200 dpi) and SVG of each,
matplotlib's Agg canvas only.

Multi-seed convention, the same in every figure: a thin line is the mean over seeds with a shaded
+-1 std band, and the method's best seed (:func:`dpcore.summary.best_seeds`, the highest validated
accuracy averaged over rounds) is drawn bold, as in the paper's Figure 1. With one seed, only that
seed's line is drawn. Sparsity axes are log scales of the weights remaining, labelled in sparsity %.
Each method and synthetic source has the colour :mod:`dpcore.palette` gives it, as on the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from ..palette import PALETTE, colors
from ..results import RunResults, as_results
from ..summary import Stat, _group, _round_rows, best_seeds, label_runs

STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 7.5,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "svg.hashsalt": "dptui"}
SPARSITY_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


@dataclass
class FigureFile:
    name: str
    caption: str
    paths: list[Path] = field(default_factory=list)


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def sparsity_axis(ax, sparsities: list[float]) -> None:
    """x = weights remaining on a log scale, reversed so sparsity grows to the right; ticks in sparsity %."""
    lo = max(1.0 - max(sparsities, default=0.0), 1e-5)
    hi = 1.0 - min(sparsities, default=0.0)
    ax.set_xscale("log")
    ticks = [s for s in SPARSITY_TICKS if lo * 0.999 <= 1.0 - s <= hi * 1.001]
    ax.set_xticks([1.0 - s for s in ticks], [f"{100 * s:g}" for s in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(hi * 1.08, lo * 0.85)
    ax.set_xlabel("sparsity (%)  [log scale of weights remaining]")


def mean_and_best(ax, x: list[float], stats: list[Stat | None], best: tuple[list[float], list[float]] | None,
                  color: str, label: str, seed: int | None, *, style: str = "-", remaining: bool = False,
                  seed_in_label: bool = True, best_label: str = "") -> None:
    """The multi-seed convention: mean line + std band, the best seed bold (or the single seed's line)."""
    pts = [(xi, s) for xi, s in zip(x, stats) if s is not None]
    if not pts:
        return
    xs = [1.0 - p[0] if remaining else p[0] for p in pts]
    mean = [p[1].mean for p in pts]
    n = max(p[1].n for p in pts)
    if n > 1:
        std = [p[1].std for p in pts]
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.18, lw=0)
        ax.plot(xs, mean, style, color=color, lw=1.1, label=f"{label}: mean ± std (n={n})" if seed_in_label else label)
        if best:
            bx = [1.0 - v for v in best[0]] if remaining else best[0]
            ax.plot(bx, best[1], style, color=color, lw=2.6,
                    label=(best_label or f"{label}: best seed ({seed})") if seed_in_label else None)
    else:
        ax.plot(xs, mean, style, color=color, lw=2.0 if style == "-" else 1.2, marker="o", ms=2.5,
                label=f"{label} (seed {seed})" if seed is not None and seed_in_label else label)


def _per_round(runs: list[RunResults], key: str, scale: float = 1.0) -> tuple[list[float], list[Stat | None]]:
    """Per round: mean sparsity and the Stat of the rows' field ``key`` (a :class:`RoundRow` field)."""
    rows = sorted(_round_rows(runs).items())
    return ([sum(r.sparsity for r in rs) / len(rs) for _, rs in rows],
            [_scaled(Stat.of([getattr(r, key) for r in rs]), scale) for _, rs in rows])


def _scaled(s: Stat | None, k: float) -> Stat | None:
    return None if s is None else Stat(s.mean * k, s.std * k, s.n)


def _best_run(runs: list[RunResults], seed: int | None) -> RunResults | None:
    return next((r for r in runs if r.seed == seed), None)


def _best_series(run: RunResults | None, key: str, scale: float = 1.0) -> tuple[list[float], list[float]] | None:
    if run is None:
        return None
    pts = [(r.sparsity, getattr(r, key) * scale) for r in run.rounds if getattr(r, key) is not None]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


def _seed_of(runs: list[RunResults], best: dict[str, int], method: str) -> int | None:
    return best.get(method, runs[0].seed if len(runs) == 1 else None)


def accuracy_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    groups = _group(results)
    if not any(r.val_acc is not None for res in results for r in res.rounds):
        return None
    best, col = best_seeds(results), colors(list(groups))
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    per_seed = {r.seed: r.dense.test_acc for r in results if r.dense}
    dense = Stat.of(list(per_seed.values()))
    if dense:
        ax.axhline(100 * dense.mean, color="black", lw=1.2,
                   label=f"dense: {100 * dense.mean:.2f}%" + (f" ± {100 * dense.std:.2f} (n={dense.n})" if dense.n > 1 else ""))
        if dense.n > 1:
            ax.axhspan(100 * (dense.mean - dense.std), 100 * (dense.mean + dense.std), color="black", alpha=0.08, lw=0)
    allx = []
    for method, runs in groups.items():
        x, stats = _per_round(runs, "val_acc", 100.0)
        allx += x
        seed = _seed_of(runs, best, method)
        mean_and_best(ax, x, stats, _best_series(_best_run(runs, seed), "val_acc", 100.0), col[method], method, seed,
                      remaining=True)
    sparsity_axis(ax, allx)
    ax.set_ylabel("test accuracy (%) after training on real data")
    ax.set_title("Accuracy of each round's mask vs sparsity")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return FigureFile("accuracy_vs_sparsity", "Test accuracy of each round's mask, trained from the rewind point on "
                      "real data (the Rounds table's val acc), against sparsity; black: the dense net.",
                      save(fig, out_dir, "accuracy_vs_sparsity"))


def time_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    groups = _group(results)
    if not any(res.rounds for res in results):
        return None
    best, col = best_seeds(results), colors(list(groups))
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    allx = []
    for method, runs in groups.items():
        seed = _seed_of(runs, best, method)
        x, stats = _per_round(runs, "time_to_mask_s")
        allx += x
        mean_and_best(ax, x, stats, _best_series(_best_run(runs, seed), "time_to_mask_s"), col[method], method, seed,
                      remaining=True)
        x, stats = _per_round(runs, "time_to_mask_validated_s")
        if any(s is not None for s in stats):
            mean_and_best(ax, x, stats, None, col[method], f"{method} + validation", None, style="--", remaining=True)
    sparsity_axis(ax, allx)
    ax.set_yscale("log")
    ax.set_ylabel("time-to-mask (s, log scale)")
    ax.set_title("Time-to-mask vs sparsity (solid: mask only; dashed: + final real training)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return FigureFile("time_to_mask", "Time-to-mask (all inner trainings + pruning up to that sparsity; dashed: plus "
                      "the final training on real data), the Rounds table's t2m columns; time-to-distill excluded.",
                      save(fig, out_dir, "time_to_mask"))


def interpolation_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    panels: dict[tuple[str, str], dict[int, list[tuple[int, dict]]]] = {}
    best = best_seeds(results)
    for method, runs in _group(results).items():
        for res in runs:
            for e in res.instability or []:
                rw = e["rewind"]
                where = f"rewind k={rw['k']}" + ("" if rw["unit"] == "epoch" else " steps") + \
                        (" +BN" if e.get("bn_recompute") else "") + f", {len(e['alphas'])} alphas"
                panels.setdefault((method, where), {}).setdefault(e["round"], []).append((res.seed, e))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    cmap = matplotlib.colormaps["viridis"]
    for ax, ((method, where), by_round) in zip(axes.flat, panels.items()):
        rounds = sorted(by_round)
        for i, rnd in enumerate(rounds):
            items = by_round[rnd]
            color = cmap(0.85 * i / max(1, len(rounds) - 1))
            alphas = items[0][1]["alphas"]
            stats = [Stat.of([100 * e["test_acc"][j] for _, e in items]) for j in range(len(alphas))]
            inst = Stat.of([100 * e["instability"] for _, e in items])
            seed = best.get(method) if len(items) > 1 else items[0][0]
            mine = next((e for s, e in items if s == seed), None)
            where_ = f"{100 * items[0][1]['sparsity']:.1f}% sparse"
            label = f"{where_}: instability {inst.mean:.2f}" + (f" ± {inst.std:.2f}" if inst.n > 1 else "") + " pp"
            mean_and_best(ax, alphas, stats, (alphas, [100 * a for a in mine["test_acc"]]) if mine else None,
                          color, label, seed,
                          best_label=f"{where_}, best seed {seed}: {100 * mine['instability']:.2f} pp" if mine else "")
        ax.set_title(f"{method}, {where}")
        ax.set_xlabel("interpolation α (0: copy A, 1: copy B)")
        ax.set_xlim(0, 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=6.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Linear interpolation between two copies trained with different data orders", fontsize=10)
    fig.tight_layout()
    return FigureFile("interpolation", "Test accuracy along the straight line between the weights of two copies of "
                      "each mask trained from the same rewind point with different data orders (Instability table); "
                      "a dip below the ends = instability to SGD noise.", save(fig, out_dir, "interpolation"))


def histogram_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    groups = {m: [r for r in runs if r.weight_histograms] for m, runs in _group(results).items()}
    groups = {m: runs for m, runs in groups.items() if runs}
    if not groups:
        return None
    ref = next(iter(groups.values()))[0].weight_histograms
    layers = list(ref["layers"])
    rounds = sorted({h["round"] for runs in groups.values() for r in runs for h in r.weight_histograms["rounds"]})
    col = colors(list(groups))
    fig = Figure(figsize=(3.0 * len(rounds), 2.1 * len(layers)))
    axes = fig.subplots(len(layers), len(rounds), squeeze=False)
    for j, rnd in enumerate(rounds):
        for i, name in enumerate(layers):
            ax = axes[i, j]
            edges = ref["layers"][name]["edges"]
            width = edges[1] - edges[0]
            centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
            allc = ref["layers"][name]["all"]
            total = sum(allc)
            ax.step(centers, [c / (total * width) for c in allc], where="mid", color="black", lw=0.9, ls=":",
                    label="all weights (dense)")
            sparsity = None
            for method, runs in groups.items():
                dens = []
                for res in runs:
                    h = next((x for x in res.weight_histograms["rounds"] if x["round"] == rnd), None)
                    if h is None or h["layers"][name]["kept"] == 0:
                        continue
                    sparsity = h["sparsity"]
                    kept = h["layers"][name]["kept"]
                    dens.append([c / (kept * width) for c in h["layers"][name]["counts"]])
                if not dens:
                    continue
                stats = [Stat.of([d[b] for d in dens]) for b in range(len(centers))]
                mean = [s.mean for s in stats]
                ax.step(centers, mean, where="mid", color=col[method], lw=1.3,
                        label=method + (f" (mean of {len(dens)} seeds)" if len(dens) > 1 else ""))
                if len(dens) > 1:
                    ax.fill_between(centers, [s.mean - s.std for s in stats], [s.mean + s.std for s in stats],
                                    step="mid", color=col[method], alpha=0.18, lw=0)
            where = f", {100 * sparsity:.1f}% sparse" if sparsity is not None else ""
            ax.set_title(f"{name.removesuffix('.weight')} · round {rnd}{where}", fontsize=8)
            if i == len(layers) - 1:
                ax.set_xlabel("initial weight value $w_0$")
            if j == 0:
                ax.set_ylabel("density")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Initial values of the surviving weights (appendix B)", fontsize=10)
    fig.tight_layout()
    return FigureFile("weight_histograms", "Density of the initial values w0 of the weights each mask keeps, per layer "
                      "(dotted: all weights); a dip at 0 = the bimodal IMP ticket. The numbers are in the "
                      "'Initial weights of survivors' table. Std bands over seeds; no best seed here.",
                      save(fig, out_dir, "weight_histograms"))


def layer_sparsity_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    groups = {m: runs for m, runs in _group(results).items() if any(r.rounds for r in runs)}
    if not groups:
        return None
    best = best_seeds(results)
    fig = Figure(figsize=(3.4 * len(groups), 3.0))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)
    for ax, (method, runs) in zip(axes[0], groups.items()):
        layers = list(runs[0].rounds[0].layers)
        seed = _seed_of(runs, best, method)
        bestrun = _best_run(runs, seed)
        for i, name in enumerate(layers):
            rows = sorted(_round_rows(runs).items())
            x = [rnd for rnd, _ in rows]
            stats = [_scaled(Stat.of([r.layers.get(name) for r in rs]), 100.0) for _, rs in rows]
            b = ([r.round for r in bestrun.rounds], [100 * r.layers[name] for r in bestrun.rounds]) if bestrun else None
            mean_and_best(ax, x, stats, b, PALETTE[i % len(PALETTE)], name.removesuffix(".weight"), seed,
                          seed_in_label=False)
        x, stats = [], []
        for rnd, rs in sorted(_round_rows(runs).items()):
            x.append(rnd)
            stats.append(Stat.of([100 * r.sparsity for r in rs]))
        ax.plot(x, [s.mean for s in stats], "k--", lw=1.0, label="whole net")
        n = len(runs)
        ax.set_title(f"{method} (seed {seed})" if n == 1 else f"{method}: mean ± std of {n} seeds, bold: best seed {seed}",
                     fontsize=8)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("layer sparsity (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    return FigureFile("layer_sparsity", "Sparsity of each prunable layer per round (Layer sparsity table); dashed: "
                      "the whole net.", save(fig, out_dir, "layer_sparsity"))


def landscape_figure(results: list[RunResults], out_dir: Path) -> FigureFile | None:
    """Contours of the 2-D loss slices of the trained tickets: one panel per method and round (best seed)."""
    best = best_seeds(results)
    panels = []
    for method, runs in _group(results).items():
        run = _best_run(runs, _seed_of(runs, best, method))
        for e in (run.landscape if run else None) or []:
            panels.append((method, e))
    if not panels:
        return None
    fig = Figure(figsize=(2.8 * len(panels), 2.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (method, e) in zip(axes[0], panels):
        cs = ax.contourf(e["alphas"], e["betas"], [list(col) for col in zip(*e["loss"])], levels=12, cmap="viridis")
        ax.plot([0], [0], "w+", ms=8)
        ax.set_title(f"{method}, round {e['round']} ({100 * e['sparsity']:.1f}%)", fontsize=8)
        ax.set_xlabel("direction 1")
        fig.colorbar(cs, ax=ax, shrink=0.8)
    axes[0, 0].set_ylabel("direction 2")
    fig.tight_layout()
    return FigureFile("landscape", "Test loss of the trained tickets on two filter-normalised random directions "
                      "(+: the ticket itself).", save(fig, out_dir, "landscape"))


def overlap_figure(records: list[dict], out_dir: Path) -> FigureFile | None:
    """Heat map of mask agreement (Jaccard, mean over seeds) between every two methods, per layer and overall,
    at the deepest round every pair has (``records``: :func:`dpcore.analysis.aggregate.mask_overlaps`)."""
    if not records:
        return None
    rnd = min(max(r["round"] for r in records if (r["a"], r["b"]) == pair)
              for pair in {(r["a"], r["b"]) for r in records})
    recs = [r for r in records if r["round"] == rnd]
    pairs = list(dict.fromkeys(f"{r['a']} vs {r['b']}" for r in recs))
    layers = list(dict.fromkeys(n for r in recs for n in r["jaccard"] if n != "all")) + ["all"]
    grid = [[Stat.of([r["jaccard"].get(n) for r in recs if f"{r['a']} vs {r['b']}" == p]) for n in layers]
            for p in pairs]
    values = [[s.mean if s else float("nan") for s in row] for row in grid]
    fig = Figure(figsize=(1.0 + 0.9 * len(layers), 0.8 + 0.45 * len(pairs)))
    ax = fig.subplots()
    im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(layers)), [n.removesuffix(".weight") for n in layers], rotation=30, ha="right")
    ax.set_yticks(range(len(pairs)), pairs)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.grid(False)
    ax.set_title(f"mask agreement (Jaccard) at round {rnd} ({100 * recs[0]['sparsity']:.1f}% sparse)", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return FigureFile("mask_overlap", f"Jaccard overlap of the surviving weights of two methods' masks (same seed, "
                      f"mean over seeds), per layer and overall, at round {rnd} (Mask overlap table).",
                      save(fig, out_dir, "mask_overlap"))


def write_figures(results: list[RunResults], out_dir: Path) -> list[FigureFile]:
    """Every figure the results have data for, into ``out_dir`` (runs labelled by :func:`label_runs`)."""
    results = label_runs(results)
    out = []
    with matplotlib.rc_context(STYLE):
        for make in (accuracy_figure, time_figure, interpolation_figure, histogram_figure, layer_sparsity_figure,
                     landscape_figure):
            fig = make(results, Path(out_dir))
            if fig is not None:
                out.append(fig)
    return out


def run_figures(results: RunResults | dict, out_dir: Path) -> list[Path]:
    """One run's figures (the engine's ``[analysis] figures = true``; its results dict, until the engine keeps
    :class:`RunResults`, is read with :meth:`RunResults.from_json` here)."""
    return [p for f in write_figures([as_results(results)], out_dir) for p in f.paths]
