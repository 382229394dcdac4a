"""Several runs read back from disk: their results, the mask overlaps between them, and every table.

Runs are labelled by :func:`dpcore.summary.label_runs` (so "imp k=0" and "imp k=1" are never pooled
as seeds); all aggregation over seeds is the row model's (:mod:`dpcore.summary`).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from ..errors import DPError
from ..results import ResultsError, RunResults, as_results
from ..store import RUN_ID, RunDir, read_json
from ..summary import (Table, _group, distill_note, histogram_table, instability_table, label_runs,
                       layer_sparsity_table, overlap_table, rounds_table, seeds_table, speedup_table, ticket_table)
from .weights import jaccard, random_jaccard

Loaded = list[tuple[RunResults, RunDir]]


def load_runs(paths: list[Path]) -> Loaded:
    """Each path is a run directory (holds results.json) or a run store (its run directories are taken)."""
    out: Loaded = []
    for path in map(Path, paths):
        if (path / "results.json").is_file():
            dirs = [path]
        elif path.is_dir():
            dirs = sorted(d for d in path.iterdir() if RUN_ID.match(d.name) and (d / "results.json").is_file())
            if not dirs:
                raise DPError(f"{path}: no runs here (a run directory holds results.json); pass run directories")
        else:
            raise DPError(f"{path}: no such run directory")
        for d in dirs:
            data = read_json(d / "results.json")
            if not isinstance(data, dict) or "method" not in data or "rounds" not in data:
                raise DPError(f"{d / 'results.json'}: not a dptui results file")
            try:
                res = RunResults.from_json(data)
            except ResultsError as err:
                raise DPError(f"{d / 'results.json'}: not a dptui results file ({err})") from None
            out.append((res, RunDir(d.parent, d.name)))
    seen = set()
    for res, run in out:
        if run.path.resolve() in seen:
            raise DPError(f"{run.path}: given twice; pass each run once")
        seen.add(run.path.resolve())
    return out


def as_loaded(runs: list[tuple[RunResults | dict, RunDir]]) -> Loaded:
    """``runs`` with each results as :class:`RunResults` (a results dict is read with :meth:`RunResults.from_json`)."""
    return [(as_results(res), run) for res, run in runs]


def mask_overlaps(runs: Loaded) -> list[dict]:
    """Jaccard of the masks of every two methods at every common round, pairing runs of the same seed
    (and the same dataset and model)."""
    labelled = label_runs([res for res, _ in as_loaded(runs)])
    by: dict[str, dict[tuple, tuple[RunResults, RunDir]]] = {}
    for lab, (_, run) in zip(labelled, runs):
        by.setdefault(lab.label, {})[(lab.seed, lab.dataset, lab.model)] = (lab, run)
    order = list(_group(labelled))
    records = []
    for a, b in combinations(order, 2):
        for key in sorted(set(by[a]) & set(by[b]), key=str):
            (ra, da), (rb, db) = by[a][key], by[b][key]
            common = sorted({r.round for r in ra.rounds} & {r.round for r in rb.rounds})
            sparsity = {r.round: r.sparsity for r in ra.rounds}
            for rnd in common:
                ma, mb = da.load_mask(rnd), db.load_mask(rnd)
                if ma.keys() != mb.keys():
                    break
                records.append({"a": a, "b": b, "seed": key[0], "round": rnd, "sparsity": sparsity[rnd],
                                "jaccard": jaccard(ma, mb), "random": random_jaccard(ma, mb)})
    return records


def report_tables(runs: Loaded) -> list[Table]:
    """Every table of the report, in order; tables with nothing to show are left out. ``runs``:
    :func:`load_runs`'s (a results dict in place of a :class:`RunResults` is read with its ``from_json``)."""
    runs = as_loaded(runs)
    results = label_runs([res for res, _ in runs])
    tables = [rounds_table(results)]
    note = distill_note(results)
    if note:
        tables[0].notes.append(note)
    groups = {m: runs_[0].method for m, runs_ in _group(results).items()}
    for base in (m for m, b in groups.items() if b == "imp"):
        for other in (m for m, b in groups.items() if b == "distilled"):
            tables.append(speedup_table(results, method=other, baseline=base))
    tables.append(seeds_table(results))
    optional = [instability_table(results), ticket_table(results), layer_sparsity_table(results), histogram_table(results),
                overlap_table(mask_overlaps(runs))]
    return tables + [t for t in optional if t.rows]
