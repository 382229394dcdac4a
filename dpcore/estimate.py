"""What an experiment will cost before it starts: each planned run's wall time and the experiment's, with
``run.jobs`` runs at once.

Two sources, and each estimate says which it used:

- **the store**: finished runs in the same store with the same model, data, training settings, device type and
  precision (read from their ``config.toml``): their dense training time and, per method, their mean time per
  round (inner training + pruning + validation), scaled to the planned rounds, and their peak memory;
- **a calibration**: a few timed steps of the run's real training (and of its synthetic inner loop), here, with
  its fast path and thread count, extrapolated to its epochs and rounds.

A synthetic set still to be distilled is estimated apart, per set, from the store's past distillations with the
same distiller, data, images per class, model and device type (their seconds per iteration times the planned
iterations), else by distilling twice with a few iterations here (the difference gives the seconds per iteration,
the rest is the set-up), for the distillers whose cost grows with their iterations (DM, GM); MTT's expert
training and EL2N's scoring trainings are not estimated (said so). A set is made once, before the runs that use
it, so its time is added to the experiment's once and to the first run that uses it. The experiment's time
packs the runs onto ``jobs`` places, longest first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .config import to_dict
from .results import RoundRow, load_results

if TYPE_CHECKING:
    from .experiment import Experiment

CALIBRATION_STEPS = 12
# Two short distillations after an untimed one (the first in a process pays one-off set-up: ~1.5 s for DM on a
# CPU, more than 50 of its iterations), each timed twice and the faster kept (a hiccup in the short one would
# shrink the slope several times over): the second's extra time is 40 iterations'.
CALIBRATION_ITERATIONS = (2, 42)
ITERATIVE_DISTILLERS = ("dm", "gm")  # distillers whose time is a set-up plus a cost per iteration
NOT_COUNTED = "a synthetic set still to be distilled is not in the estimate"


@dataclass(frozen=True)
class RunEstimate:
    run_id: str
    label: str
    seed: int
    wall_s: float
    source: str  # "done", "store (N runs)", "calibration (N steps)"
    peak_mb: float | None = None  # the run's process: peak resident memory (CPU) or CUDA memory allocated
    notes: tuple[str, ...] = ()


@dataclass
class ExperimentEstimate:
    runs: list[RunEstimate]
    jobs: int
    wall_s: float  # the runs packed onto ``jobs`` places
    notes: list[str] = field(default_factory=list)
    distills: list[tuple[float, str]] = field(default_factory=list)  # (s, where from) of each set to distil, counted


def _signature(cfg: dict, method: str) -> tuple:
    """What a run's time depends on (besides its rounds): model, data, training, device type, precision."""
    run = cfg.get("run", {})
    device = "cuda" if str(run.get("device", "cpu")).startswith("cuda") else "cpu"
    train = {k: v for k, v in cfg.get("train", {}).items() if k in ("epochs", "batch_size", "optimizer")}
    data = {k: v for k, v in cfg.get("data", {}).items() if k in ("dataset", "subset", "path", "zca")}
    syn = {k: v for k, v in cfg.get("synthetic", {}).items() if k in ("epochs", "batch_size", "ipc")} \
        if method == "distilled" else {}
    return (repr(sorted(cfg.get("model", {}).items())), repr(sorted(data.items())), repr(sorted(train.items())),
            device, run.get("precision", "fp32"), method, repr(sorted(syn.items())))


def _past_rounds(runs_dir: Path) -> dict[tuple, list[tuple[float, float, float | None]]]:
    """signature -> [(dense train s, mean s per round, peak memory MiB)] of the finished runs in the store."""
    from .profiles import read_toml
    from .store import RUN_ID

    out: dict[tuple, list[tuple[float, float, float | None]]] = {}
    if not runs_dir.is_dir():
        return out
    for d in runs_dir.iterdir():
        if not (d.is_dir() and RUN_ID.match(d.name) and (d / "config.toml").is_file()):
            continue
        try:
            res = load_results(d)
            cfg = read_toml(d / "config.toml")
        except Exception:  # noqa: BLE001 - an unreadable past run just does not inform the estimate
            continue
        if res is None or res.status != "done" or not res.rounds:
            continue
        dense = res.dense.train_s if res.dense and res.dense.train_s else 0.0
        method = cfg.get("run", {}).get("method", res.method)
        out.setdefault(_signature(cfg, method), []).append(
            (dense, mean_round_s(dense, res.rounds), res.peak_memory_mb))
    return out


def mean_round_s(dense_s: float, rows: Sequence[RoundRow]) -> float:
    """The mean recorded cost of a run's finished rounds (inner training + pruning + validation), ``dense_s``
    being its dense training's time; 0 without rows."""
    total, before = 0.0, dense_s
    for r in rows:  # an inner training that reused the previous real training (IMP) cost nothing new
        inner = r.inner_train_s or 0.0
        total += (0.0 if inner and inner == before else inner) + (r.prune_s or 0.0) + (r.val_train_s or 0.0)
        before = r.val_train_s
    return total / len(rows) if rows else 0.0


def pack(durations: Iterable[float], places: int) -> float:
    """The wall time of ``durations`` run ``places`` at once: longest first onto the least loaded place."""
    loads = [0.0] * max(1, places)
    for d in sorted(durations, reverse=True):
        i = loads.index(min(loads))
        loads[i] += d
    return max(loads)


def _calibrate(exp: Experiment) -> dict[str, float]:
    """Seconds per step of the real training and of the synthetic inner loop, timed here on a few steps."""
    from .engine import Run
    from .masks import full_mask
    from .parallel import peak_memory_mb
    from .synthetic.evaluate import dsa_augment
    from .training import Schedule, train

    exp.use_threads()
    checked = exp.check()
    run = Run(exp.cfg, exp.plans[0], checked.dataset, exp.runs_dir)
    model = run.new_model()
    ds, t = checked.dataset, exp.cfg.train
    n = min(ds.x_train.shape[0], t.batch_size * CALIBRATION_STEPS)
    sched = Schedule(optimizer=t.optimizer, lr=t.lr, epochs=1, batch_size=t.batch_size, momentum=t.momentum,
                     weight_decay=t.weight_decay)
    mask = full_mask(model)
    train(model, ds.x_train[:n], ds.y_train[:n], schedule=sched, seed=0, prepare=ds.prepare, mask=mask,
          fast=run.fast)  # warm-up (and a compile, if the fast path compiles)
    out = train(model, ds.x_train[:n], ds.y_train[:n], schedule=sched, seed=1, prepare=ds.prepare, mask=mask,
                fast=run.fast)
    per = {"real_step_s": out.train_s / max(out.steps, 1)}
    sc = exp.cfg.synthetic  # a synthetic set's shape: ipc images per class (real ones stand in for the timing)
    k = min(ds.x_train.shape[0], sc.ipc * ds.num_classes)
    syn_sched = Schedule(optimizer="sgd", lr=sc.lr, epochs=CALIBRATION_STEPS, batch_size=sc.batch_size,
                         momentum=sc.momentum, weight_decay=sc.weight_decay)
    out = train(model, ds.x_train[:k], ds.y_train[:k], schedule=syn_sched, seed=2, prepare=ds.prepare, mask=mask,
                augment=dsa_augment(sc.dsa, 0), fast=run.fast)
    per["syn_step_s"] = out.train_s / max(out.steps, 1)
    per["peak_mb"] = peak_memory_mb(exp.device.type)  # this process, holding the experiment's data as a run does
    return per


def _past_distillations(cache_dir: Path) -> dict[tuple, list[float]]:
    """(method, dataset, ipc, model, device type) -> seconds per iteration of the sets distilled in the store."""
    out: dict[tuple, list[float]] = {}
    if not cache_dir.is_dir():
        return out
    for meta_file in cache_dir.glob("*/meta.json"):
        try:
            meta = json.loads(meta_file.read_text())
            per = float(meta["distill_s"]) / int(meta["iterations_done"])
            key = (meta["method"], meta["dataset"], int(meta["ipc"]), json.dumps(meta["model"], sort_keys=True),
                   str(meta.get("device", "cpu")).split(":")[0])
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue  # an unreadable or unfinished set just does not inform the estimate
        out.setdefault(key, []).append(per)
    return out


def _distill_s(exp: Experiment, past: dict[tuple, list[float]]) -> tuple[float | None, str]:
    """(seconds, where from) to distil the experiment's synthetic set; None when it is not estimated."""
    import tempfile
    from dataclasses import replace

    from .synthetic import get_distiller
    from .synthetic.cache import canonical_model, resolve_for
    from .synthetic.provider import synthetic_set
    from .training import Stopwatch

    sc, ds = exp.cfg.synthetic, exp.check().dataset
    iterations = resolve_for(get_distiller(sc.method), ds.name, sc.ipc, dict(sc.params)).get("iterations")
    model = json.dumps(canonical_model({"name": exp.cfg.model.name, **exp.cfg.model.options}), sort_keys=True)
    seen = past.get((sc.method, ds.name, sc.ipc, model, exp.device.type))
    if seen and iterations:
        return iterations * sum(seen) / len(seen), f"store ({len(seen)} past set{'s' if len(seen) != 1 else ''})"
    if sc.method not in ITERATIVE_DISTILLERS or not iterations:
        return None, f"{sc.method}: not estimated"
    exp.use_threads()
    times: dict[int, float] = {}
    for k in (1, *CALIBRATION_ITERATIONS, *CALIBRATION_ITERATIONS):
        with tempfile.TemporaryDirectory(prefix="dpcore-estimate-") as tmp:  # a throwaway cache: nothing stays
            watch = Stopwatch(exp.device)
            synthetic_set(replace(sc, params={**sc.params, "iterations": k}), ds, exp.device, model=exp.cfg.model,
                          cache_dir=tmp)
            times[k] = min(times.get(k, float("inf")), watch.elapsed())
    (k0, k1) = CALIBRATION_ITERATIONS
    t0, t1 = times[k0], times[k1]
    per = max(0.0, (t1 - t0) / (k1 - k0))
    return max(0.0, t0 - k0 * per) + iterations * per, f"calibration ({k0} and {k1} iterations here)"


def estimate(exp: Experiment) -> ExperimentEstimate:
    """Each planned run's wall time (from the store's past runs, else a calibration) and the experiment's."""
    from .engine import finished_results, shared_stages
    from .synthetic.provider import synthetic_cache_dir
    from .training import steps_per_epoch

    cap = exp.capacity()
    cfg = to_dict(exp.cfg)
    past = _past_rounds(Path(exp.runs_dir))
    calibration: dict[str, float] | None = None
    checked = exp.check()
    n_train = checked.dataset.x_train.shape[0]
    out: list[RunEstimate] = []
    dense_counted: set[str] = set()
    distills: dict[str, tuple[float | None, str]] = {}  # synthetic stage -> its estimate, counted once
    past_sets: dict[tuple, list[float]] | None = None  # the store's past distillations, read when first needed
    for plan in exp.plans:
        label = f"{plan.label} seed {plan.seed}"
        if finished_results(exp.cfg, plan, checked.dataset, exp.runs_dir) is not None:
            out.append(RunEstimate(plan.run_id, label, plan.seed, 0.0, "done (read from the store)"))
            continue
        stages = shared_stages(exp.cfg, plan, checked.dataset, exp.runs_dir)
        dense_stage = next(s for s in stages if s.kind == "dense")
        run_notes = []
        distill_s = 0.0
        for stage in (s for s in stages if s.kind == "synthetic" and not s.ready):
            first_use = stage.key not in distills
            if first_use:
                if past_sets is None:
                    past_sets = _past_distillations(synthetic_cache_dir(Path(exp.runs_dir)))
                distills[stage.key] = _distill_s(exp, past_sets)
            seconds, where = distills[stage.key]
            if seconds is None:
                run_notes.append("its synthetic set is not distilled yet: that time is not in the estimate")
            elif first_use:
                distill_s = seconds
                run_notes.append(f"distilling its synthetic set first: {seconds:.0f} s, from {where}")
        seen = past.get(_signature({**cfg, "run": {**cfg["run"], "device": exp.device.type}}, plan.method))
        rounds = exp.cfg.prune.rounds
        if seen:
            dense_s = sum(d for d, _, _ in seen) / len(seen)
            per_round = sum(p for _, p, _ in seen) / len(seen)
            peaks = [m for _, _, m in seen if m]
            peak = max(peaks) if peaks else None
            source = f"store ({len(seen)} past run{'s' if len(seen) != 1 else ''})"
        else:
            calibration = calibration or _calibrate(exp)
            real = exp.cfg.train.epochs * steps_per_epoch(n_train, exp.cfg.train.batch_size) * calibration["real_step_s"]
            validate = {"every": 1.0, "final": 1.0 / rounds, "none": 0.0}[exp.cfg.prune.validate]
            inner = {"imp": real, "distilled": exp.cfg.synthetic.epochs * calibration["syn_step_s"]}.get(plan.method, 0.0)
            if plan.method == "imp" and validate == 1.0:
                inner = 0.0  # IMP's validation of round r is its inner training of round r+1
            dense_s, per_round, peak = real, inner + validate * real, calibration["peak_mb"]
            source = f"calibration ({CALIBRATION_STEPS} timed steps here)"
        first = dense_stage.key not in dense_counted and not dense_stage.ready
        dense_counted.add(dense_stage.key)
        out.append(RunEstimate(plan.run_id, label, plan.seed,
                               (dense_s if first else 0.0) + distill_s + rounds * per_round, source, peak,
                               tuple(run_notes)))
    counted = [(seconds, where) for seconds, where in distills.values() if seconds is not None]
    notes = [NOT_COUNTED] if len(counted) < len(distills) else []
    notes += [f"distilling the synthetic set: {seconds:.0f} s (from {where}), in the first run using it"
              for seconds, where in counted]
    return ExperimentEstimate(out, cap.jobs, pack((e.wall_s for e in out), cap.jobs), notes, counted)


def estimate_table(est: ExperimentEstimate):
    """The estimate as a table of the row model (shown and exported like every other table)."""
    from .summary import Column, Table

    cols = [Column("run", "run", "text"), Column("run_id", "run id", "text"), Column("wall_s", "est. wall s", "sec"),
            Column("peak_mb", "est. peak MiB", "int"), Column("source", "from", "text")]
    table = Table("Estimate", cols)
    for e in est.runs:
        table.rows.append({"run": e.label, "run_id": e.run_id, "wall_s": e.wall_s, "peak_mb": e.peak_mb,
                           "source": e.source})
    table.rows.append({"run": f"experiment, {est.jobs} at once", "run_id": "", "wall_s": est.wall_s, "source": ""})
    table.notes += est.notes
    table.notes.append("store: the mean dense time and time per round of finished runs with the same model, data, "
                       "training, device and precision, and their highest peak memory; calibration: a few steps "
                       "timed here, extrapolated, and this process's peak memory with the data loaded")
    return table
