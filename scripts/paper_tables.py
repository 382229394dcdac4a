"""The tables of README's "Reproducing the paper" from a run store: validated accuracy (mean ± std over seeds)
of each method and synthetic source at chosen rounds, and the time-to-mask / time-to-distill at them.

    python scripts/paper_tables.py RUNS_DIR EXPERIMENT [--rounds 3,7,10]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from dpcore.results import RunResults, load_results


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.mean(xs)
    return f"{m:.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{m:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("experiment")
    parser.add_argument("--rounds", default="3,7,10")
    args = parser.parse_args()
    rounds = [int(r) for r in args.rounds.split(",")]
    groups: dict[str, list[RunResults]] = defaultdict(list)
    for path in sorted(args.runs.glob("*/results.json")):
        res = load_results(path)
        if res is not None and res.experiment == args.experiment and res.status == "done":
            groups[res.label].append(res)
    dense = sorted({r.seed: r.dense.test_acc for rs in groups.values() for r in rs if r.dense}.items())
    print(f"dense: {mean_std([100 * a for _, a in dense])} (seeds {[s for s, _ in dense]})\n")
    sp = {r: next(iter(groups.values()))[0].rounds[r - 1].sparsity for r in rounds}
    print("| method / source | " + " | ".join(f"{100 * sp[r]:.1f}%" for r in rounds) + " |")
    print("|---|" + "---:|" * len(rounds))
    for name, rs in groups.items():
        cells = [mean_std([100 * x.rounds[r - 1].val_acc for x in rs]) for r in rounds]
        print(f"| {name} (n={len(rs)}) | " + " | ".join(cells) + " |")
    print()
    print("| method / source | time-to-distill s | " + " | ".join(
        f"t2m {100 * sp[r]:.1f}% s (+ validation)" for r in rounds) + " |")
    print("|---|---:|" + "---:|" * len(rounds))
    for name, rs in groups.items():
        distill = [x.distill_s for x in rs if x.distill_s]
        made = max(distill) if distill else None
        cells = []
        for r in rounds:
            t = statistics.mean(x.rounds[r - 1].time_to_mask_s for x in rs)
            v = statistics.mean(x.rounds[r - 1].time_to_mask_validated_s for x in rs)
            cells.append(f"{t:.0f} ({v:.0f})")
        print(f"| {name} | {'-' if made is None else f'{made:.0f}'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
