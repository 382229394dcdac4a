"""The one row model behind every table: Rich, CSV, JSON, Markdown, HTML and the dashboard.

Runs of an experiment (:class:`~dpcore.results.RunResults`) are grouped by method and round and aggregated
over seeds (mean, std, n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .results import RoundRow, RunResults, SyntheticInfo, as_results


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> "Stat | None":
        xs = [float(v) for v in values if v is not None]
        if not xs:
            return None
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return cls(mean, std, len(xs))


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str  # "text", "int", "pct" (fraction shown as %), "sec", "x" (ratio), "num", each may be a Stat


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


METHOD_ORDER = {"dense": 0, "imp": 1, "distilled": 2, "random": 3, "snip": 4, "grasp": 5, "synflow": 6}


def speedup(baseline: "Stat | None", method: "Stat | None") -> float | None:
    """How many times faster ``method``'s mean time is than ``baseline``'s (None when either is missing)."""
    return baseline.mean / method.mean if baseline and method and method.mean > 0 else None


def format_cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, Stat):
        text = format_cell(value.mean, kind)
        if value.n > 1:
            text += "±" + format_cell(value.std, kind)
        return text
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "sec":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "int":
        return f"{int(value)}"
    if kind == "num":
        return f"{value:.3f}"
    return str(value)


def run_label(res: RunResults) -> str:
    """A run's group in tables: its method, plus its synthetic source when an experiment compares
    several ("distilled dm ipc10"); see :attr:`RunResults.label`."""
    return res.label


def _group(results: list[RunResults]) -> dict[str, list[RunResults]]:
    by: dict[str, list[RunResults]] = {}
    for res in results:
        by.setdefault(res.label, []).append(res)
    # by method, then in the order runs came (an experiment's order of seeds, variants)
    return dict(sorted(by.items(), key=lambda kv: METHOD_ORDER.get(kv[1][0].method.split()[0], 9)))


def _round_rows(runs: list[RunResults]) -> dict[int, list[RoundRow]]:
    out: dict[int, list[RoundRow]] = {}
    for res in runs:
        for row in res.rounds:
            out.setdefault(row.round, []).append(row)
    return out


def rounds_table(results: list[RunResults]) -> Table:
    """Per method and round: sparsity, inner train time, validated accuracy, time-to-mask."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"),
            Column("sparsity", "sparsity%", "pct"), Column("inner_train_s", "inner s", "sec"),
            Column("inner_test_acc", "inner acc%", "pct"), Column("val_acc", "val acc%", "pct"),
            Column("time_to_mask_s", "t2m s", "sec"),
            Column("time_to_mask_validated_s", "t2m+val s", "sec"), Column("seeds", "seeds", "int")]
    seeds = sorted({r.seed for r in results})
    table = Table("Rounds", cols)
    table.notes.append(f"mean±std over seeds {', '.join(map(str, seeds))}; accuracies on the real test set")
    per_seed = {r.seed: r.dense for r in results if r.dense}  # shared by a seed's methods
    dense = Stat.of([d.test_acc for d in per_seed.values()])
    if dense:
        table.rows.append({"method": "dense", "round": 0, "sparsity": 0.0, "val_acc": dense,
                           "inner_train_s": Stat.of([d.train_s for d in per_seed.values()]),
                           "seeds": dense.n})
    for method, runs in _group(results).items():
        for rnd, rows in sorted(_round_rows(runs).items()):
            table.rows.append({
                "method": method, "round": rnd,
                "sparsity": sum(r.sparsity for r in rows) / len(rows),
                **{k: Stat.of([getattr(r, k) for r in rows]) for k in
                   ("inner_train_s", "inner_test_acc", "val_acc", "time_to_mask_s", "time_to_mask_validated_s")},
                "seeds": len(rows),
            })
    warmup: dict[str, float] = {}
    for r in results:
        warmup[r.label] = warmup.get(r.label, 0.0) + sum(row.compile_s or 0.0 for row in r.rounds)
    if any(warmup.values()):
        per = ", ".join(f"{m} {s:.1f} s" for m, s in sorted(warmup.items()) if s)
        table.notes.append(f"times exclude the one-off torch.compile warm-up of compiled training steps ({per} over "
                           "all rounds and seeds; compile_s in each results.json row)")
    return table


def speedup_table(results: list[RunResults], method: str = "distilled", baseline: str = "imp") -> Table:
    """At each matched sparsity: time-to-mask of ``method`` vs ``baseline`` and the speed-up."""
    cols = [Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct"),
            Column(f"{baseline}_val_acc", f"{baseline} acc%", "pct"),
            Column(f"{method}_val_acc", f"{method} acc%", "pct"),
            Column(f"{baseline}_t2m", f"{baseline} t2m s", "sec"),
            Column(f"{method}_t2m", f"{method} t2m s", "sec"),
            Column("speedup", "speed-up", "x"),
            Column("speedup_validated", "speed-up +val", "x")]
    table = Table(f"Speed-up of {method} over {baseline}", cols)
    groups = _group(results)
    if method not in groups or baseline not in groups:
        table.notes.append(f"needs both {baseline} and {method} runs")
        return table
    a, b = _round_rows(groups[baseline]), _round_rows(groups[method])
    for rnd in sorted(set(a) & set(b)):
        ra, rb = a[rnd], b[rnd]
        ta, tb = Stat.of([r.time_to_mask_s for r in ra]), Stat.of([r.time_to_mask_s for r in rb])
        va = Stat.of([r.time_to_mask_validated_s for r in ra])
        vb = Stat.of([r.time_to_mask_validated_s for r in rb])
        table.rows.append({
            "round": rnd, "sparsity": ra[0].sparsity,
            f"{baseline}_val_acc": Stat.of([r.val_acc for r in ra]),
            f"{method}_val_acc": Stat.of([r.val_acc for r in rb]),
            f"{baseline}_t2m": ta, f"{method}_t2m": tb,
            "speedup": speedup(ta, tb),
            "speedup_validated": speedup(va, vb),
        })
    table.notes.append("t2m = time-to-mask (inner trainings + pruning); +val adds the final real training; "
                       "speed-up = baseline t2m / method t2m at the same round; time-to-distill is apart")
    return table


def methods_table(results: list[RunResults], baseline: str = "imp") -> Table:
    """Every cheap way to a mask against ``baseline`` under the same accounting: per method (and synthetic
    source) and round, validated accuracy and time-to-mask beside the baseline's, and the speed-up."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct"),
            Column("val_acc", "acc%", "pct"), Column(f"{baseline}_val_acc", f"{baseline} acc%", "pct"),
            Column("t2m", "t2m s", "sec"), Column(f"{baseline}_t2m", f"{baseline} t2m s", "sec"),
            Column("speedup", "speed-up", "x"), Column("speedup_validated", "speed-up +val", "x")]
    table = Table(f"Methods vs {baseline}", cols)
    groups = _group(results)
    if baseline not in groups:
        table.notes.append(f"needs {baseline} runs")
        return table
    base = _round_rows(groups[baseline])
    for label, runs in groups.items():
        if label == baseline:
            continue
        for rnd, rows in sorted(_round_rows(runs).items()):
            if rnd not in base:
                continue
            t, tb = Stat.of([r.time_to_mask_s for r in rows]), Stat.of([r.time_to_mask_s for r in base[rnd]])
            v = Stat.of([r.time_to_mask_validated_s for r in rows])
            vb = Stat.of([r.time_to_mask_validated_s for r in base[rnd]])
            table.rows.append({
                "method": label, "round": rnd, "sparsity": rows[0].sparsity,
                "val_acc": Stat.of([r.val_acc for r in rows]),
                f"{baseline}_val_acc": Stat.of([r.val_acc for r in base[rnd]]),
                "t2m": t, f"{baseline}_t2m": tb,
                "speedup": speedup(tb, t),
                "speedup_validated": speedup(vb, v),
            })
    table.notes.append("time-to-mask: inner trainings and pruning up to the round (imp, distilled, random); one "
                       "scoring of the initialisation (snip, grasp, synflow); +val adds the mask's real training")
    return table


def headline_table(results: list[RunResults], baseline: str = "imp") -> Table:
    """The experiment in one row per method: against ``baseline`` at the highest sparsity where both were
    validated, the accuracy difference and (for a method that trains in its rounds) the speed-up to that mask,
    from the same per-round means as the Rounds table. :func:`headline_lines` says each row in words."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct"),
            Column("val_acc", "acc%", "pct"), Column(f"{baseline}_val_acc", f"{baseline} acc%", "pct"),
            Column("points", f"points vs {baseline}", "num"), Column("speedup", "speed-up", "x"),
            Column("speedup_validated", "speed-up +val", "x")]
    table = Table("Headline", cols)
    groups = _group(results)
    if baseline not in groups:
        return table
    base = _round_rows(groups[baseline])
    for label, runs in groups.items():
        if label == baseline:
            continue
        rows_by_round = _round_rows(runs)
        both = [r for r in rows_by_round if r in base and Stat.of([x.val_acc for x in rows_by_round[r]])
                and Stat.of([x.val_acc for x in base[r]])]
        if not both:
            continue
        rnd = max(both)
        rows, brows = rows_by_round[rnd], base[rnd]
        acc, bacc = Stat.of([r.val_acc for r in rows]), Stat.of([r.val_acc for r in brows])
        trains = any(r.inner_test_acc is not None for r in rows)  # a mask found by training: its time counts
        t, tb = Stat.of([r.time_to_mask_s for r in rows]), Stat.of([r.time_to_mask_s for r in brows])
        v, vb = Stat.of([r.time_to_mask_validated_s for r in rows]), Stat.of([r.time_to_mask_validated_s for r in brows])
        table.rows.append({
            "method": label, "round": rnd, "sparsity": rows[0].sparsity, "val_acc": acc, f"{baseline}_val_acc": bacc,
            "points": 100 * (acc.mean - bacc.mean),
            "speedup": speedup(tb, t) if trains else None,
            "speedup_validated": speedup(vb, v) if trains else None,
        })
    table.notes += headline_lines(table, baseline)
    table.notes.append(f"each method at the highest sparsity where it and {baseline} were validated; means over seeds; "
                       "speed-up = time-to-mask ratio (+val: with each mask's real training)")
    return table


def headline_lines(table: Table, baseline: str = "imp") -> list[str]:
    """One line per row of :func:`headline_table`, e.g. "distilled: the 89.3% mask 3.9x faster than imp (3.2x with
    its validation), 0.74 points below"."""
    out = []
    for row in table.rows:
        pts = row["points"]
        how = f"{abs(pts):.2f} points {'below' if pts < 0 else 'above'}" if round(pts, 2) else "the same accuracy"
        at = f"{100 * row['sparsity']:.1f}%"
        if row.get("speedup") is not None:
            val = f" ({row['speedup_validated']:.1f}x with its validation)" if row.get("speedup_validated") else ""
            out.append(f"{row['method']}: the {at} mask {row['speedup']:.1f}x faster than {baseline}{val}, {how}")
        else:
            out.append(f"{row['method']}: {how} {baseline} at {at}")
    return out


def distill_note(results: list[RunResults]) -> str | None:
    if any(r.variant for r in results):
        return None  # several sources: the distillers table has them
    for res in results:
        syn = res.synthetic
        if syn:
            t = syn.distill_s
            when = f"{t:.1f} s" if isinstance(t, (int, float)) else "unknown (precomputed)"
            return f"synthetic set: {syn.source} ({syn.images} images); time-to-distill {when}" + \
                   (" (made once and read from the store's cache)" if syn.cached else "")
    return None


def distillers_table(results: list[RunResults], baseline: str = "imp") -> Table:
    """Distilled runs of several synthetic sources: per source and round, time-to-distill,
    time-to-mask and validated accuracy, beside the baseline's at the same round."""
    cols = [Column("distiller", "distiller", "text"), Column("ipc", "ipc", "int"), Column("round", "round", "int"),
            Column("sparsity", "sparsity%", "pct"), Column("distill_s", "distill s", "sec"),
            Column("time_to_mask_s", "t2m s", "sec"), Column("total_s", "distill+t2m s", "sec"),
            Column("val_acc", "val acc%", "pct"), Column(f"{baseline}_val_acc", f"{baseline} acc%", "pct"),
            Column(f"{baseline}_t2m", f"{baseline} t2m s", "sec"), Column("speedup", "speed-up", "x"),
            Column("seeds", "seeds", "int")]
    table = Table("Distillers", cols)
    base = _round_rows([r for r in results if r.method == baseline])
    variants: dict[str, list[RunResults]] = {}
    for res in results:
        if res.method == "distilled":
            variants.setdefault(res.variant or (res.synthetic.source if res.synthetic else None) or "?", []).append(res)
    for name, runs in variants.items():
        syn = [r.synthetic or SyntheticInfo() for r in runs]
        distill = Stat.of([s.distill_s for s in syn])
        shown = distill.mean if distill and distill.std == 0 else distill  # one set shared by every seed
        ipc = next((s.ipc for s in syn if s.ipc), None)
        for rnd, rows in sorted(_round_rows(runs).items()):
            t2m = Stat.of([r.time_to_mask_s for r in rows])
            ref = Stat.of([r.time_to_mask_s for r in base.get(rnd, [])])
            table.rows.append({
                "distiller": name, "ipc": ipc, "round": rnd, "sparsity": sum(r.sparsity for r in rows) / len(rows),
                "distill_s": shown, "time_to_mask_s": t2m,
                "total_s": Stat.of([None if r.time_to_mask_s is None else r.time_to_mask_s + (distill.mean if distill else 0.0)
                                    for r in rows]),
                "val_acc": Stat.of([r.val_acc for r in rows]),
                f"{baseline}_val_acc": Stat.of([r.val_acc for r in base.get(rnd, [])]),
                f"{baseline}_t2m": ref,
                "speedup": speedup(ref, t2m),
                "seeds": len(rows),
            })
    table.notes.append("distill = time-to-distill (once per source, shared by every seed; '-' for a set made "
                       "elsewhere); t2m = time-to-mask (inner trainings on the synthetic set + pruning); "
                       f"speed-up = {baseline} t2m / distiller t2m at the same round, time-to-distill apart")
    if any(r.synthetic and r.synthetic.cached and r.synthetic.distill_s is not None
           for r in results if r.method == "distilled"):
        table.notes.append("a cached set reports the time it took when it was made")
    return table


def failures_table(results: list[RunResults]) -> Table:
    """The runs that failed: which, after how many rounds, and the error line they recorded."""
    cols = [Column("method", "method", "text"), Column("seed", "seed", "int"), Column("rounds", "rounds done", "int"),
            Column("error", "error", "text"), Column("run_id", "run", "text")]
    rows = [{"method": r.label, "seed": r.seed, "rounds": len(r.rounds), "error": r.error or "", "run_id": r.run_id}
            for r in results if r.status == "failed"]
    return Table("Failed runs", cols, rows)


def experiment_tables(results: list[RunResults | dict]) -> list[Table]:
    """An experiment's tables. ``results``: its runs' :class:`RunResults` (a results dict, as the engine and the
    executors still return, is read with :meth:`RunResults.from_json` here)."""
    results = [as_results(r) for r in results]
    failed = failures_table(results)
    tables = [rounds_table(results)]
    methods = {r.method for r in results}
    if any(r.variant for r in results):
        tables.append(distillers_table(results))
    elif {"imp", "distilled"} <= methods:
        tables.append(speedup_table(results))
    if "imp" in methods and methods & {"snip", "grasp", "synflow"}:
        tables.append(methods_table(results))
    headline = headline_table(results)
    if headline.rows:
        tables.insert(1, headline)
    note = distill_note(results)
    if note:
        tables[0].notes.append(note)
    unstable = instability_table(results)
    if unstable.rows:
        tables.append(unstable)
    tickets = ticket_table(results)
    if tickets.rows:
        tables.append(tickets)
    if failed.rows:
        tables.append(failed)
    return tables


# -- a pinned baseline (the dashboard's Compare) -----------------------------------------------------

SAME_SPARSITY = 1e-3  # rounds of two groups compared only where their masks are this close in sparsity


def baseline_points(results: list[RunResults], label: str) -> dict[int, tuple[float, float]]:
    """Per round of the runs grouped as ``label`` (see :func:`_group`): (mean sparsity, mean validated accuracy),
    rounds without a validated accuracy left out."""
    out = {}
    for rnd, rows in _round_rows(_group(results).get(label, [])).items():
        acc = Stat.of([r.val_acc for r in rows])
        if acc is not None:
            out[rnd] = (sum(r.sparsity for r in rows) / len(rows), acc.mean)
    return out


def _points_vs(row: dict[str, Any], points: dict[int, tuple[float, float]]) -> float | None:
    acc, base = row.get("val_acc"), points.get(row.get("round"))  # type: ignore[arg-type]
    acc = acc.mean if isinstance(acc, Stat) else acc
    if acc is None or base is None or abs(row.get("sparsity", base[0]) - base[0]) > SAME_SPARSITY:
        return None
    return 100 * (acc - base[1])


def with_baseline(table: Table, label: str, points: dict[int, tuple[float, float]]) -> Table:
    """A copy of ``table`` with a "vs baseline" column after its validated accuracy: that accuracy minus the
    baseline's (``points``, from :func:`baseline_points`) at the same round and sparsity, in percentage points.
    A table without ``round`` and ``val_acc`` columns comes back as it is; ``table`` itself is never changed."""
    keys = [c.key for c in table.columns]
    if "round" not in keys or "val_acc" not in keys:
        return table
    at = keys.index("val_acc") + 1
    columns = table.columns[:at] + [Column("vs_baseline", "vs baseline pts", "num")] + table.columns[at:]
    rows = [{**row, "vs_baseline": _points_vs(row, points)} for row in table.rows]
    note = f"vs baseline = validated accuracy minus {label}'s at the same round, in percentage points"
    return Table(table.title, columns, rows, table.notes + [note])


# -- multi-seed views and the analyses' tables ------------------------------------------------------

def label_runs(results: list[RunResults]) -> list[RunResults]:
    """Copies of ``results`` whose :attr:`~RunResults.label` (their group in tables) tells apart runs that would
    otherwise be pooled as seeds: the same method with another rewind point ("imp k=1") or from another
    experiment ("imp [exp]"), and distilled runs of different synthetic sources ("distilled dm ipc10").
    The copies keep their ``method``; the label is their ``table_label``."""
    kinds: dict[str, set] = {}
    for res in results:
        kinds.setdefault(res.label, set()).add((res.rewind_text, res.experiment))
    out = []
    for res in results:
        label = res.label
        seen = kinds[label]
        if len({k for k, _ in seen}) > 1:
            label += " " + res.rewind_text
        if len({e for _, e in seen}) > 1:
            label += f" [{res.experiment}]"
        # the label already names the variant, so it is dropped from the copy (tables see no variants)
        out.append(replace(res, table_label=label, variant=""))
    return out


def seed_score(res: RunResults) -> float | None:
    """A run's score for "best seed": its validated test accuracy averaged over its rounds."""
    vals = res.val_accs()
    return sum(vals) / len(vals) if vals else None


def best_seeds(results: list[RunResults]) -> dict[str, int]:
    """Per method, the seed with the best :func:`seed_score` (the bold line of the paper's Figure 1)."""
    best: dict[str, tuple[float, int]] = {}
    for method, runs in _group(results).items():
        for res in runs:
            score = seed_score(res)
            if score is not None and (method not in best or (score, -res.seed) > (best[method][0], -best[method][1])):
                best[method] = (score, res.seed)
    return {m: s for m, (_, s) in best.items()}


def seeds_table(results: list[RunResults]) -> Table:
    """One row per run: its own numbers, the best seed of each method marked."""
    cols = [Column("method", "method", "text"), Column("seed", "seed", "int"), Column("rounds", "rounds", "int"),
            Column("sparsity", "final sparsity%", "pct"), Column("mean_val_acc", "mean val acc%", "pct"),
            Column("final_val_acc", "final val acc%", "pct"), Column("time_to_mask_s", "final t2m s", "sec"),
            Column("best", "best", "text")]
    table = Table("Seeds", cols)
    best = best_seeds(results)
    for method, runs in _group(results).items():
        for res in sorted(runs, key=lambda r: r.seed):
            last = res.last
            table.rows.append({"method": method, "seed": res.seed, "rounds": len(res.rounds),
                               "sparsity": last.sparsity if last else None, "mean_val_acc": seed_score(res),
                               "final_val_acc": last.val_acc if last else None,
                               "time_to_mask_s": last.time_to_mask_s if last else None,
                               "best": "best" if best.get(method) == res.seed else ""})
    table.notes.append("best = the seed with the highest validated accuracy averaged over its rounds "
                       "(drawn bold in every figure)")
    return table


def _entry_key(e: dict) -> tuple:
    return (e["round"], e["rewind"]["k"], e["rewind"]["unit"], len(e["alphas"]), bool(e.get("bn_recompute")))


def instability_table(results: list[RunResults | dict]) -> Table:
    """Per method, mask (round) and rewind point: the interpolation's instability, mean±std over seeds.
    (A results dict, as ``dptui analyze`` still gets from the engine, is read with :meth:`RunResults.from_json`.)"""
    results = [as_results(r) for r in results]
    cols = [Column("method", "method", "text"), Column("round", "round", "int"),
            Column("sparsity", "sparsity%", "pct"), Column("rewind", "rewind", "text"),
            Column("end_acc", "end acc%", "pct"), Column("min_acc", "min acc% on path", "pct"),
            Column("instability", "instability pp", "pct"), Column("barrier", "barrier pp", "pct"),
            Column("seeds", "seeds", "int"), Column("best_seed", "best seed", "int"),
            Column("best_instability", "best seed instability pp", "pct")]
    table = Table("Instability", cols)
    best = best_seeds(results)
    for method, runs in _group(results).items():
        by: dict[tuple, list[tuple[int, dict]]] = {}
        for res in runs:
            for e in res.instability or []:
                by.setdefault(_entry_key(e), []).append((res.seed, e))
        for key in sorted(by):
            items = by[key]
            rnd, k, unit, n, bn = key
            mine = [e for s, e in items if s == best.get(method)]
            table.rows.append({
                "method": method, "round": rnd, "sparsity": items[0][1]["sparsity"],
                "rewind": (f"k={k}" if unit == "epoch" else f"k={k} steps") + (" +BN" if bn else ""),
                "end_acc": Stat.of([sum(e["end_acc"]) / 2 for _, e in items]),
                "min_acc": Stat.of([min(e["test_acc"]) for _, e in items]),
                "instability": Stat.of([e["instability"] for _, e in items]),
                "barrier": Stat.of([e["barrier"] for _, e in items]),
                "seeds": len(items), "best_seed": best.get(method) if mine else None,
                "best_instability": mine[0]["instability"] if mine else None,
            })
    table.notes.append("two copies trained from the rewind point with different data orders, evaluated at "
                       "evenly spaced alphas; instability = max over alpha of mean(end accs) - acc(alpha) (>= 0); "
                       "barrier = max drop below the straight line between the ends; pp = percentage points")
    return table


def ticket_table(results: list[RunResults]) -> Table:
    """The trained tickets' curvature and loss landscape (``[analysis] hessian_rounds`` / ``landscape_rounds``):
    per method and round, the top Hessian eigenvalue and the mean rise of the loss over the 2-D slice."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct"),
            Column("eigenvalue", "top Hessian eig", "num"), Column("converged", "converged", "text"),
            Column("centre_loss", "loss", "num"), Column("mean_rise", "slice loss rise", "num"),
            Column("seeds", "seeds", "int")]
    table = Table("Hessian and landscape", cols)
    for label, runs in _group(results).items():
        by_round: dict[int, dict[str, list]] = {}
        for res in runs:
            for key, entries in (("hessian", res.hessian), ("landscape", res.landscape)):
                for e in entries or []:
                    by_round.setdefault(e["round"], {"hessian": [], "landscape": [], "sparsity": e["sparsity"]})[key].append(e)
        for rnd, got in sorted(by_round.items()):
            h, ls = got["hessian"], got["landscape"]
            table.rows.append({
                "method": label, "round": rnd, "sparsity": got["sparsity"],
                "eigenvalue": Stat.of([e["eigenvalue"] for e in h]),
                "converged": f"{sum(bool(e['converged']) for e in h)}/{len(h)}" if h else "",
                "centre_loss": Stat.of([e["centre_loss"] for e in ls]), "mean_rise": Stat.of([e["mean_rise"] for e in ls]),
                "seeds": max(len(h), len(ls)),
            })
    table.notes.append("on each round's mask trained on real data from the rewind point; eigenvalue: power iteration "
                       "on fixed real batches; slice: test loss on two filter-normalised random directions "
                       "(Li et al. 2018), rise = mean over the grid minus the centre")
    return table


def _short(layer: str) -> str:
    return layer.removesuffix(".weight")


def layer_sparsity_table(results: list[RunResults]) -> Table:
    """Per method and round: the sparsity of every prunable layer, mean±std over seeds."""
    layers: list[str] = []
    for res in results:
        for row in res.rounds:
            layers += [n for n in row.layers if n not in layers]
    cols = [Column("method", "method", "text"), Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct")]
    cols += [Column(f"layer:{n}", _short(n) + "%", "pct") for n in layers]
    table = Table("Layer sparsity", cols)
    for method, runs in _group(results).items():
        for rnd, rows in sorted(_round_rows(runs).items()):
            table.rows.append({"method": method, "round": rnd, "sparsity": sum(r.sparsity for r in rows) / len(rows),
                               **{f"layer:{n}": Stat.of([r.layers.get(n) for r in rows]) for n in layers}})
    table.notes.append("fraction of each layer's weights pruned; the global ranking sets it, so it differs per layer")
    return table


def histogram_table(results: list[RunResults]) -> Table:
    """Numbers behind the weight histograms: per method, round and layer, where the survivors started."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"),
            Column("sparsity", "sparsity%", "pct"), Column("layer", "layer", "text"),
            Column("kept", "surviving weights", "int"), Column("near_zero", "near-zero% of survivors", "pct"),
            Column("near_zero_all", "near-zero% of all", "pct"), Column("abs_ratio", "mean abs w0 survivors/all", "num")]
    table = Table("Initial weights of survivors", cols)
    near = None
    for method, runs in _group(results).items():
        by: dict[tuple[int, str], list[tuple[dict, dict, float]]] = {}
        for res in runs:
            hist = res.weight_histograms
            if not hist:
                continue
            near = hist.get("near_zero", near)
            for rnd in hist["rounds"]:
                for name, h in rnd["layers"].items():
                    by.setdefault((rnd["round"], name), []).append((h, hist["layers"][name], rnd["sparsity"]))
        for (rnd, name), items in sorted(by.items(), key=lambda kv: kv[0][0]):
            table.rows.append({
                "method": method, "round": rnd, "sparsity": items[0][2], "layer": _short(name),
                "kept": Stat.of([h["kept"] for h, _, _ in items]).mean,
                "near_zero": Stat.of([h["near_zero"] for h, _, _ in items]),
                "near_zero_all": Stat.of([a["near_zero_all"] for _, a, _ in items]),
                "abs_ratio": Stat.of([h["mean_abs"] / a["mean_abs_all"] if h["mean_abs"] is not None
                                      and a["mean_abs_all"] else None for h, a, _ in items]),
            })
    if near is not None:
        table.notes.append(f"w0 = initial value; near-zero = |w0| < {near} x the std of the layer's initial weights; "
                           "fewer near-zero survivors than overall = the bimodal shape of IMP tickets; "
                           "surviving weights = mean over seeds")
    return table


def overlap_table(records: list[dict]) -> Table:
    """Per pair of methods and round: Jaccard overlap of their masks (same seed), mean±std over seeds.

    ``records``: {"a", "b", "seed", "round", "sparsity", "jaccard": {layer|"all": J}, "random": {...}}.
    """
    layers: list[str] = []
    for rec in records:
        layers += [n for n in rec["jaccard"] if n != "all" and n not in layers]
    cols = [Column("pair", "masks", "text"), Column("round", "round", "int"), Column("sparsity", "sparsity%", "pct"),
            Column("all", "Jaccard all", "num"), Column("random", "random pair", "num")]
    cols += [Column(f"layer:{n}", _short(n), "num") for n in layers]
    table = Table("Mask overlap", cols)
    by: dict[tuple[str, int], list[dict]] = {}
    for rec in records:
        by.setdefault((f"{rec['a']} vs {rec['b']}", rec["round"]), []).append(rec)
    for (pair, rnd), recs in by.items():
        table.rows.append({"pair": pair, "round": rnd, "sparsity": sum(r["sparsity"] for r in recs) / len(recs),
                           "all": Stat.of([r["jaccard"]["all"] for r in recs]),
                           "random": Stat.of([r["random"]["all"] for r in recs]),
                           **{f"layer:{n}": Stat.of([r["jaccard"].get(n) for r in recs]) for n in layers}})
    table.notes.append("Jaccard = |A and B| / |A or B| of the surviving weights of two masks of the same seed; "
                       "random pair = the same for independent random masks of the same layer densities (expected value)")
    return table
