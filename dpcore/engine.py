"""The pruning engine: Algorithm 1 for ``imp``, ``distilled`` and ``random``, plus the dense baseline.

Synchronous; reports progress only through typed events sent to a sink; honours a stop flag between
steps. Knows nothing of any UI. A run resumes after its last finished round on disk.

Per round r (mask m_{r-1} -> m_r):
  inner training of m_{r-1} from the rewind point (real data for imp, synthetic for distilled,
  none for random) -> prune -> rewind -> optionally validate m_r (train on real data, test).
IMP's validation of m_r and its inner training in round r+1 are the same computation (same start,
mask, data and seed), so it runs once and its measured time counts in both places.

After the last round, the ``[analysis]`` section's analyses run (:mod:`dpcore.analysis.stage`). A distilled
run gets its synthetic set from :mod:`dpcore.synthetic.provider`; an experiment may compare several sources
(``synthetic.variants``), one distilled run each.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .analysis.stage import AnalysisStage
from .augment import crop_flip
from .config import Config, SyntheticConfig, synthetic_variants, to_dict
from .data import load_dataset
from .data.dataset import Dataset
from .errors import DPError, TrainingDiverged
from .events import (DenseDone, EpochProgress, Event, RoundDone, RoundStarted,
                     RunDone, RunFailed, RunStarted, Sink, StageStarted, fan_out)
from .masks import (Mask, full_mask, layer_sparsity, magnitude_prune, mask_to_cpu, output_layer_name,
                    prunable, random_prune, remaining_target, sparsity)
from .models import build_model
from .store import RunDir, atomic_torch_save, config_hash
from .safe_load import safe_torch_load
from .synthetic.base import SyntheticSet
from .synthetic.provider import synthetic_provider
from .training import (Schedule, Stopped, Stopwatch, derive_seed, evaluate, restore, snapshot,
                       steps_per_epoch, train)

ENGINE_VERSION = 1  # bump when a change alters results, so old runs are not resumed into new ones
StopFlag = Callable[[], bool]
ANALYSIS_KEYS = ("instability", "weight_histograms", "figures")  # results.json keys written by analyses


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DPError(f"run.device = '{name}' but no CUDA device is available; use run.device = 'auto' or 'cpu'")
    return torch.device(name)


def apply_threads(cfg: Config) -> None:
    """``run.threads`` > 0 sets torch's intra-op thread count for this process."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)


def run_identity(cfg: Config, method: str, seed: int, device: torch.device,
                 synthetic: SyntheticConfig | None = None) -> dict:
    """Everything that determines a run's results, in canonical form (hashed into its id).

    ``synthetic``: the distilled run's source (one of :func:`synthetic_variants`; default ``[synthetic]``).
    A variant's label is not part of it: renaming a variant keeps its runs."""
    d = to_dict(cfg)
    ident = {
        "engine": ENGINE_VERSION,
        "method": method,
        "seed": seed,
        "device": device.type,
        "data": {k: v for k, v in d["data"].items() if k != "root"},
        "model": d["model"],
        "train": d["train"],
        "prune": {k: v for k, v in d["prune"].items() if k != "methods"},
    }
    if cfg.run.threads and device.type == "cpu":  # absent when unset, so existing ids do not change
        ident["threads"] = cfg.run.threads
    if method == "distilled":
        ident["synthetic"] = {k: v for k, v in to_dict(synthetic or cfg.synthetic).items() if k != "variants"}
    if cfg.analysis.requested:  # absent for runs without analyses, so their ids do not change
        a = d["analysis"]
        ident["analysis"] = {**{k: v for k, v in a.items() if k != "figures"},
                             "instability_rewinds": sorted(set(a["instability_rewinds"])),
                             "instability_rounds": sorted(set(a["instability_rounds"])),
                             "histogram_rounds": sorted(set(a["histogram_rounds"]))}
    return ident


@dataclass(frozen=True)
class RunPlan:
    method: str
    seed: int
    run_id: str
    identity: dict
    variant: str = ""  # the synthetic source's label when an experiment compares several
    synthetic: SyntheticConfig | None = None  # that source's settings (None: [synthetic])

    @property
    def label(self) -> str:
        return f"{self.method} {self.variant}" if self.variant else self.method


def plan_runs(cfg: Config, device: torch.device) -> list[RunPlan]:
    """One run per seed x method, and per synthetic variant for ``distilled``."""
    variants = synthetic_variants(cfg)
    plans = []
    for seed in cfg.run.seeds:
        for method in cfg.prune.methods:
            for v in (variants if method == "distilled" else [None]):
                sc = v.config if v is not None and v.label else None
                ident = run_identity(cfg, method, seed, device, sc)
                plans.append(RunPlan(method, seed, config_hash(ident), ident, v.label if v else "", sc))
    return plans


def load_data(cfg: Config, data_root: str | Path | None, device: torch.device) -> Dataset:
    root = data_root or cfg.data.root or "data"
    ds = load_dataset(cfg.data.dataset, root, path=cfg.data.path or None, zca=cfg.data.zca)
    if cfg.data.subset:
        ds = ds.subset(cfg.data.subset, seed=0)
    return ds.to(device)


class Throttle:
    """Lets an event through at most every ``interval`` seconds, always the last one of a stage."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.last = 0.0

    def ready(self, final: bool) -> bool:
        now = time.monotonic()
        if final or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class Run(AnalysisStage):
    """One method x one seed of an experiment (its analyses: :class:`AnalysisStage`)."""

    def __init__(self, cfg: Config, plan: RunPlan, dataset: Dataset, runs_dir: Path, *,
                 synthetic: Callable[["Run"], SyntheticSet] | None = None,
                 sink: Sink | None = None, should_stop: StopFlag | None = None):
        if plan.synthetic is not None:  # this run's own synthetic source and training settings
            cfg = replace(cfg, synthetic=replace(plan.synthetic, variants=[]))
        self.cfg, self.plan, self.ds = cfg, plan, dataset
        self.method, self.seed = plan.method, plan.seed
        self.device = dataset.device
        self.runs_dir = Path(runs_dir)
        self.dir = RunDir(self.runs_dir, plan.run_id)
        self.get_synthetic = synthetic
        self.should_stop = should_stop or (lambda: False)
        self.emit = fan_out(self.dir.append_event, sink)
        self.stage, self.round, self.throttle = "", 0, Throttle()
        self.per_epoch = steps_per_epoch(dataset.x_train.shape[0], cfg.train.batch_size)
        self.real_schedule = Schedule(
            optimizer=cfg.train.optimizer, lr=cfg.train.lr, epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size, momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay, milestones=tuple(cfg.train.milestones), gamma=cfg.train.gamma)
        self.rewind_step = cfg.prune.rewind * (self.per_epoch if cfg.prune.rewind_unit == "epoch" else 1)
        self.results: dict = {}

    # -- events --------------------------------------------------------------------------------
    def event(self, cls: type[Event], **fields) -> None:
        self.emit(cls(run_id=self.plan.run_id, **fields))

    def start_stage(self, stage: str) -> None:
        self.stage = stage
        self.stage_watch = time.perf_counter()
        self.event(StageStarted, stage=stage, round=self.round)

    def on_epoch(self, epoch: int, epochs: int, loss: torch.Tensor) -> None:
        if not self.throttle.ready(epoch == epochs):
            return
        elapsed = time.perf_counter() - self.stage_watch
        eta = elapsed / epoch * (epochs - epoch) if epoch else 0.0
        self.event(EpochProgress, stage=self.stage, round=self.round, epoch=epoch, epochs=epochs,
                   loss=float(loss), elapsed_s=elapsed, eta_s=eta)

    # -- building blocks -----------------------------------------------------------------------
    def new_model(self) -> torch.nn.Module:
        torch.manual_seed(derive_seed(self.seed, "init"))
        model = build_model(self.cfg.model.name, num_classes=self.ds.num_classes, in_shape=self.ds.shape,
                            **self.cfg.model.options)
        return model.to(self.device)

    def real_augment(self):
        if self.cfg.data.augment and self.ds.augment == "crop_flip":
            return lambda xb, gen: crop_flip(xb, 4, generator=gen)
        return None

    def train_real(self, model, start: dict, mask: Mask, key: int, *, start_step: int,
                   capture_step: int | None = None):
        restore(model, start)
        out = train(model, self.ds.x_train, self.ds.y_train, schedule=self.real_schedule,
                    seed=derive_seed(self.seed, "real", key), prepare=self.ds.prepare, mask=mask,
                    augment=self.real_augment(), start_step=start_step, capture_step=capture_step,
                    on_epoch=self.on_epoch, should_stop=self.should_stop)
        acc, _ = evaluate(model, self.ds.x_test, self.ds.y_test, prepare=self.ds.prepare,
                          batch_size=self.cfg.run.eval_batch_size)
        return out, acc

    def train_synthetic(self, model, start: dict, mask: Mask, syn: SyntheticSet, key: int):
        from .synthetic.evaluate import train_on_synthetic  # the one recipe, shared with `dptui distill`

        restore(model, start)
        out = train_on_synthetic(model, syn, self.cfg.synthetic, seed=derive_seed(self.seed, "synthetic", key),
                                 mask=mask, on_epoch=self.on_epoch, should_stop=self.should_stop)
        acc, _ = evaluate(model, self.ds.x_test, self.ds.y_test, prepare=self.ds.prepare,
                          batch_size=self.cfg.run.eval_batch_size)
        return out, acc

    def check_finite(self, model, mask: Mask, r: int) -> None:
        """Refuse to rank weights by magnitude after a training that diverged."""
        bad = next((n for n, p in prunable(model).items() if not bool(torch.isfinite(p).all())), None)
        if bad is None:
            return
        if self.method == "distilled":
            lr, key = self.cfg.synthetic.lr, "synthetic.lr"
            if self.cfg.synthetic.use_learned_lr and (self.results.get("synthetic") or {}).get("lr"):
                lr, key = self.results["synthetic"]["lr"], "the set's learned lr (or synthetic.use_learned_lr = false)"
            where = "on the synthetic set"
        else:
            lr, key, where = self.cfg.train.lr, "train.lr", "on real data"
        raise TrainingDiverged(f"round {r}: the inner training {where} diverged ({bad} has non-finite weights "
                               f"training a mask of {100 * sparsity(mask):.1f}% sparsity); lower {key} (now {lr:g})")

    def dense_identity(self) -> dict:
        """What determines the dense training of this run's seed (shared by the seed's methods)."""
        keys = ("engine", "seed", "device", "data", "model", "train", "threads")
        return {k: self.plan.identity[k] for k in keys if k in self.plan.identity}

    def dense_baseline(self, model, init: dict) -> dict:
        """Train the dense net on real data once per (data, model, train, rewind, seed, device); cached."""
        ident = self.dense_identity()
        ident["rewind_step"] = self.rewind_step
        path = self.runs_dir / "cache" / "dense" / f"{config_hash(ident)}.pt"
        if path.exists():
            dense = safe_torch_load(path)
            self.event(DenseDone, test_acc=dense["test_acc"], train_s=dense["train_s"], cached=True)
            return dense
        self.start_stage("dense")
        out, acc = self.train_real(model, init, full_mask(model), 0, start_step=0,
                                   capture_step=self.rewind_step if self.rewind_step else None)
        dense = {"test_acc": acc, "train_s": out.train_s, "trained": snapshot(model),
                 "rewind": out.capture, "rewind_s": out.capture_s or 0.0}
        atomic_torch_save(path, dense)
        self.event(DenseDone, test_acc=acc, train_s=out.train_s, cached=False)
        return dense

    # -- the run -------------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg, method = self.cfg, self.method
        rounds = cfg.prune.rounds
        self.dir.create({**to_dict(cfg), "run": {**to_dict(cfg.run), "method": method, "seed": self.seed,
                                                  "device": str(self.device), "run_id": self.plan.run_id,
                                                  **({"variant": self.plan.variant} if self.plan.variant else {})}})
        old = self.dir.read_results()
        if old and old.get("status") == "done" and len(old.get("rounds", [])) == rounds \
                and not self.analyses_pending(old, cfg.analysis):
            return old
        rows = self.dir.finished_rounds()[:rounds]
        wall = time.perf_counter()
        self.results = self.new_results(rows)
        self.results.update({k: old[k] for k in ANALYSIS_KEYS if old and k in old})
        self.event(RunStarted, experiment=cfg.experiment.name, method=method, seed=self.seed,
                   dataset=self.ds.name, model=cfg.model.name, device=str(self.device), rounds=rounds,
                   resumed_after=len(rows), variant=self.plan.variant)
        try:
            self.loop(rows)
            status = "done"
        except Stopped:
            status = "stopped"
        except Exception as err:  # noqa: BLE001 - a failed run must be recorded, not crash the others
            message = str(err) if isinstance(err, DPError) else f"{type(err).__name__}: {err}"
            self.results.update(status="failed", error=message, traceback=traceback.format_exc())
            self.dir.write_results(self.results)
            self.event(RunFailed, error=message)
            if isinstance(err, DPError):
                raise  # bad input (data, synthetic files): every run would fail alike; exit 2
            return self.results
        self.results.update(status=status, updated_at=time.time())
        self.dir.write_results(self.results)
        self.event(RunDone, status=status, rounds_done=len(self.results["rounds"]),
                   wall_s=time.perf_counter() - wall)
        return self.results

    def new_results(self, rows: list[dict]) -> dict:
        return {
            "schema": 1, "run_id": self.plan.run_id, "experiment": self.cfg.experiment.name,
            "method": self.method, **({"variant": self.plan.variant} if self.plan.variant else {}), "seed": self.seed, "dataset": self.ds.name, "model": self.cfg.model.name,
            "device": str(self.device), "threads": torch.get_num_threads(), "status": "running", "error": None,
            "rounds_planned": self.cfg.prune.rounds, "fraction": self.cfg.prune.fraction,
            "rewind": {"k": self.cfg.prune.rewind, "unit": self.cfg.prune.rewind_unit, "step": self.rewind_step},
            "dense": None, "synthetic": None, "rounds": list(rows),
            "started_at": time.time(), "updated_at": time.time(),
        }

    def start_point(self) -> tuple[torch.nn.Module, dict, dict]:
        """The initialised model, its initial state and the (cached) dense baseline."""
        model = self.new_model()
        init = snapshot(model)
        self.results["prunable_weights"] = sum(p.numel() for p in prunable(model).values())
        dense = self.dense_baseline(model, init)
        self.results["dense"] = {"test_acc": dense["test_acc"], "train_s": dense["train_s"]}
        self.results["rewind"]["rewind_s"] = dense["rewind_s"]
        return model, init, dense

    def loop(self, rows: list[dict]) -> None:
        cfg, method = self.cfg, self.method
        model, init, dense = self.start_point()
        rewind = init if self.rewind_step == 0 else dense["rewind"]
        syn = None
        if method == "distilled":
            self.start_stage("distill")
            syn = self.get_synthetic(self)
            ipc = syn.meta.get("ipc") or syn.ipc(self.ds.num_classes)  # files: from their labels
            self.results["synthetic"] = {"source": syn.meta.get("source", syn.meta.get("method", "file")),
                                         "images": int(syn.images.shape[0]), "ipc": ipc,
                                         "distill_s": syn.meta.get("distill_s"), "cached": syn.meta.get("cached", False),
                                         "lr": syn.lr}
        # The training of mask m_r on real data from the rewind point, kept for IMP's next round.
        pending: tuple[int, dict, float, float] | None = None
        if method == "imp" and self.rewind_step == 0:
            pending = (0, dense["trained"], dense["test_acc"], dense["train_s"])
        start = len(rows)
        mask = full_mask(model) if start == 0 else {n: m.to(self.device) for n, m in self.dir.load_mask(start).items()}
        t2m = rows[-1]["time_to_mask_s"] if rows else dense["rewind_s"]
        out_name = output_layer_name(model)
        for r in range(start + 1, cfg.prune.rounds + 1):
            self.round = r
            total = sum(m.numel() for m in mask.values())
            self.event(RoundStarted, round=r, rounds=cfg.prune.rounds,
                       target_sparsity=1 - remaining_target(total, cfg.prune.fraction, r) / total)
            inner_s, inner_acc = 0.0, None
            if method == "imp":
                if pending and pending[0] == r - 1:
                    _, trained, inner_acc, inner_s = pending
                    restore(model, trained)
                else:
                    self.start_stage("inner")
                    out, inner_acc = self.train_real(model, rewind, mask, r - 1, start_step=self.rewind_step)
                    inner_s = out.train_s
            elif method == "distilled":
                self.start_stage("inner")
                out, inner_acc = self.train_synthetic(model, rewind, mask, syn, r - 1)
                inner_s = out.train_s
            if method != "random":
                self.check_finite(model, mask, r)
            self.start_stage("prune")
            watch = Stopwatch(self.device)
            kw = dict(total_round=r, fraction=cfg.prune.fraction, scope=cfg.prune.scope,
                      output_fraction=cfg.prune.output_fraction)
            if method == "random":
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "random", r))
                mask = {n: m.to(self.device) for n, m in random_prune(mask, gen, output_name=out_name, **kw).items()}
            else:
                mask = magnitude_prune(model, mask, **kw)
            prune_s = watch.elapsed()
            restore(model, rewind)
            t2m += inner_s + prune_s
            val_acc = val_s = None
            if cfg.prune.validate == "every" or (cfg.prune.validate == "final" and r == cfg.prune.rounds):
                self.start_stage("validate")
                out, val_acc = self.train_real(model, rewind, mask, r, start_step=self.rewind_step)
                val_s = out.train_s
                if method == "imp":
                    pending = (r, snapshot(model), val_acc, val_s)
            row = {
                "round": r, "sparsity": sparsity(mask),
                "remaining": sum(int(m.sum()) for m in mask.values()),
                "inner_train_s": inner_s, "inner_test_acc": inner_acc, "prune_s": prune_s,
                "val_acc": val_acc, "val_train_s": val_s,
                "time_to_mask_s": t2m, "time_to_mask_validated_s": None if val_s is None else t2m + val_s,
                "layer_sparsity": layer_sparsity(mask),
            }
            self.dir.save_round(r, mask_to_cpu(mask), row)
            self.results["rounds"].append(row)
            self.results["updated_at"] = time.time()
            self.dir.write_results(self.results)
            self.event(RoundDone, row=row)
        self.analyze(model, init, dense, cfg.analysis)


def run_experiment(cfg: Config, runs_dir: str | Path, *, data_root: str | Path | None = None,
                   sink: Sink | None = None, should_stop: StopFlag | None = None,
                   only: list[str] | None = None) -> list[dict]:
    """Run (or resume) every method x seed of ``cfg``; returns each run's results dict."""
    device = resolve_device(cfg.run.device)
    apply_threads(cfg)
    dataset = load_data(cfg, data_root, device)
    provide = synthetic_provider(cfg, Path(runs_dir), data_root)
    results = []
    for plan in plan_runs(cfg, device):
        if only is not None and plan.run_id not in only:
            continue
        if should_stop is not None and should_stop():
            break
        run = Run(cfg, plan, dataset, Path(runs_dir), synthetic=provide, sink=sink, should_stop=should_stop)
        results.append(run.execute())
    return results
