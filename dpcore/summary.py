"""The one row model behind every table: Rich, CSV, JSON, Markdown, HTML and the dashboard.

Runs of an experiment are grouped by method and round and aggregated over seeds (mean, std, n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
    kind: str  # "text", "int", "pct" (fraction shown as %), "sec", "x" (ratio), each may be a Stat


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


METHOD_ORDER = {"dense": 0, "imp": 1, "distilled": 2, "random": 3}


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
    return str(value)


def _group(results: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for res in results:
        by.setdefault(res["method"], []).append(res)
    return dict(sorted(by.items(), key=lambda kv: METHOD_ORDER.get(kv[0], 9)))


def _round_rows(runs: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for res in runs:
        for row in res.get("rounds", []):
            out.setdefault(row["round"], []).append(row)
    return out


def rounds_table(results: list[dict]) -> Table:
    """Per method and round: sparsity, inner train time, validated accuracy, time-to-mask."""
    cols = [Column("method", "method", "text"), Column("round", "round", "int"),
            Column("sparsity", "sparsity%", "pct"), Column("inner_train_s", "inner s", "sec"),
            Column("inner_test_acc", "inner acc%", "pct"), Column("val_acc", "val acc%", "pct"),
            Column("time_to_mask_s", "t2m s", "sec"),
            Column("time_to_mask_validated_s", "t2m+val s", "sec"), Column("seeds", "seeds", "int")]
    seeds = sorted({r["seed"] for r in results})
    table = Table("Rounds", cols)
    table.notes.append(f"mean±std over seeds {', '.join(map(str, seeds))}; accuracies on the real test set")
    per_seed = {r["seed"]: r["dense"] for r in results if r.get("dense")}  # shared by a seed's methods
    dense = Stat.of([d.get("test_acc") for d in per_seed.values()])
    if dense:
        table.rows.append({"method": "dense", "round": 0, "sparsity": 0.0, "val_acc": dense,
                           "inner_train_s": Stat.of([d.get("train_s") for d in per_seed.values()]),
                           "seeds": dense.n})
    for method, runs in _group(results).items():
        for rnd, rows in sorted(_round_rows(runs).items()):
            table.rows.append({
                "method": method, "round": rnd,
                "sparsity": sum(r["sparsity"] for r in rows) / len(rows),
                **{k: Stat.of([r.get(k) for r in rows]) for k in
                   ("inner_train_s", "inner_test_acc", "val_acc", "time_to_mask_s", "time_to_mask_validated_s")},
                "seeds": len(rows),
            })
    return table


def speedup_table(results: list[dict], method: str = "distilled", baseline: str = "imp") -> Table:
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
        ta, tb = Stat.of([r["time_to_mask_s"] for r in ra]), Stat.of([r["time_to_mask_s"] for r in rb])
        va = Stat.of([r.get("time_to_mask_validated_s") for r in ra])
        vb = Stat.of([r.get("time_to_mask_validated_s") for r in rb])
        table.rows.append({
            "round": rnd, "sparsity": ra[0]["sparsity"],
            f"{baseline}_val_acc": Stat.of([r.get("val_acc") for r in ra]),
            f"{method}_val_acc": Stat.of([r.get("val_acc") for r in rb]),
            f"{baseline}_t2m": ta, f"{method}_t2m": tb,
            "speedup": ta.mean / tb.mean if ta and tb and tb.mean > 0 else None,
            "speedup_validated": va.mean / vb.mean if va and vb and vb.mean > 0 else None,
        })
    table.notes.append("t2m = time-to-mask (inner trainings + pruning); +val adds the final real training; "
                       "speed-up = baseline t2m / method t2m at the same round; time-to-distill is apart")
    return table


def distill_note(results: list[dict]) -> str | None:
    for res in results:
        syn = res.get("synthetic")
        if syn:
            t = syn.get("distill_s")
            when = f"{t:.1f} s" if isinstance(t, (int, float)) else "unknown (precomputed)"
            return f"synthetic set: {syn.get('source')} ({syn.get('images')} images); time-to-distill {when}" + \
                   (" (cached, made by an earlier run)" if syn.get("cached") else "")
    return None


def experiment_tables(results: list[dict]) -> list[Table]:
    tables = [rounds_table(results)]
    if {"imp", "distilled"} <= {r["method"] for r in results}:
        tables.append(speedup_table(results))
    note = distill_note(results)
    if note:
        tables[0].notes.append(note)
    return tables
