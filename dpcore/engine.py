"""The pruning engine: Algorithm 1 for ``imp``, ``distilled`` and ``random``, plus the dense baseline.

Synchronous; reports progress only through typed events sent to a sink; honours a stop flag between
steps. Knows nothing of any UI. A run resumes after its last finished round on disk.

Per round r (mask m_{r-1} -> m_r):
  inner training of m_{r-1} from the rewind point (real data for imp, synthetic for distilled,
  none for random) -> prune -> rewind -> optionally validate m_r (train on real data, test).
IMP's validation of m_r and its inner training in round r+1 are the same computation (same start,
mask, data and seed), so it runs once and its measured time counts in both places.

After the last round, the ``[analysis]`` section's analyses run (:mod:`dpcore.analysis.stage`). A distilled
run gets its synthetic set from :func:`dpcore.synthetic.provider.synthetic_set`, made once per source and
shared by the experiment's runs (:class:`SyntheticSources`); an experiment may compare several sources
(``synthetic.variants``), one distilled run each. The whole experiment is checked before its first training
step (:mod:`dpcore.validate`); a failure inside a run (a source that diverges, an exception in training)
fails that run and those that share its source, and the others go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .analysis.stage import AnalysisInputs, AnalysisStage
from .augment import crop_flip
from .config import AT_INIT_METHODS, Config, SyntheticConfig, synthetic_variants, to_dict
from .data.dataset import Dataset
from .errors import DPError, TrainingDiverged
from .events import (DenseDone, DistillDone, EpochProgress, Event, RoundDone, RoundStarted,
                     RunDone, RunFailed, RunStarted, Sink, StageStarted, fan_out)
from .masks import (Mask, full_mask, layer_sparsity, magnitude_prune, mask_to_cpu, output_layer_name,
                    prunable, random_prune, remaining_target, sparsity)
from .models import build_model
from .store import RunDir, atomic_torch_save, config_hash
from .safe_load import safe_torch_load
from .synthetic.provider import source_key, source_label, synthetic_cache_dir, synthetic_set
from .training import (FastPath, Schedule, Stopped, Stopwatch, derive_seed, evaluate, restore, snapshot,
                       steps_per_epoch, train)
from .validate import Checked, check_experiment

ENGINE_VERSION = 2  # bump when a change alters results, so old runs are not resumed into new ones
StopFlag = Callable[[], bool]
ANALYSIS_KEYS = ("instability", "weight_histograms", "hessian", "landscape", "figures")  # written by analyses
AT_INIT_KEYS = {"snip": ("score_batches", "score_batch_size"),  # [prune] keys each at-init method reads
                "grasp": ("score_batches", "score_batch_size", "grasp_temperature"),
                "synflow": ("synflow_iterations",)}
AT_INIT_ALL = {k for keys in AT_INIT_KEYS.values() for k in keys}


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
        "train": {k: v for k, v in d["train"].items() if k != "warmup" or v},  # no warm-up: ids as before
        "prune": {k: v for k, v in d["prune"].items() if k != "methods" and k not in AT_INIT_ALL},
    }
    if method in AT_INIT_METHODS:  # the scoring settings of pruning at init belong to those runs only
        ident["prune"].update({k: d["prune"][k] for k in AT_INIT_KEYS[method]})
    if cfg.run.threads and device.type == "cpu":  # absent when unset, so existing ids do not change
        ident["threads"] = cfg.run.threads
    fast = {k: getattr(cfg.run, k) for k, off in (("precision", "fp32"), ("channels_last", False), ("compile", "auto"))
            if getattr(cfg.run, k) != off}  # the fast path, only when not default (ids as before); under
    if fast:  # "train", so the dense baseline's cache key has it too
        ident["train"] = {**ident["train"], **fast}
    if method == "distilled":
        ident["synthetic"] = {k: v for k, v in to_dict(synthetic or cfg.synthetic).items() if k != "variants"}
    if cfg.analysis.requested:  # absent for runs without analyses, so their ids do not change
        a = d["analysis"]
        ident["analysis"] = {**{k: v for k, v in a.items() if k != "figures"},
                             "instability_rewinds": sorted(set(a["instability_rewinds"])),
                             "instability_rounds": sorted(set(a["instability_rounds"])),
                             "histogram_rounds": sorted(set(a["histogram_rounds"]))}
        for prefix in ("hessian", "landscape"):  # absent when unset, so existing ids do not change
            rounds = a[f"{prefix}_rounds"]
            for k in [k for k in ident["analysis"] if k.startswith(f"{prefix}_")]:
                del ident["analysis"][k]
            if rounds:
                ident["analysis"].update({k: v for k, v in a.items() if k.startswith(f"{prefix}_")},
                                         **{f"{prefix}_rounds": sorted(set(rounds))})
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


class SourceFailed(RuntimeError):
    """A synthetic source that failed for an earlier run of the experiment (not tried again)."""


class SyntheticSources:
    """The experiment's synthetic sets: made (or loaded) once per source and shared by every run and seed
    that uses it. A source that fails (a distiller that diverges, a stop) fails each run that uses it with
    the same line, without being tried again; runs of other sources are not affected."""

    def __init__(self, cfg: Config, runs_dir: Path, data_root: str | Path | None, dataset: Dataset,
                 files: dict | None = None):
        self.cfg, self.runs_dir, self.data_root, self.dataset = cfg, runs_dir, data_root, dataset
        self.made = dict(files or {})  # source_key -> SyntheticSet
        self.failed: dict[str, str] = {}

    def get(self, sc: SyntheticConfig, progress=None, should_stop: StopFlag | None = None):
        key = source_key(sc)
        if key in self.failed:
            raise SourceFailed(f"{self.failed[key]} (failed for an earlier run; not tried again)")
        if key not in self.made:
            try:
                self.made[key] = synthetic_set(sc, self.dataset, self.dataset.device, model=self.cfg.model,
                                               cache_dir=synthetic_cache_dir(self.runs_dir),
                                               data_root=self.data_root or self.cfg.data.root,
                                               progress=progress, should_stop=should_stop)
            except Stopped:
                raise
            except Exception as err:
                self.failed[key] = f"synthetic source '{source_label(sc)}': {error_line(err)}"
                raise SourceFailed(self.failed[key]) from err
        return self.made[key]


def error_line(err: BaseException) -> str:
    """A failed run's one-line error: the message of input errors, else the exception's type and message."""
    return str(err) if isinstance(err, (DPError, SourceFailed)) else f"{type(err).__name__}: {err}"


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


class Run:
    """One method x one seed of an experiment (its analyses: :class:`AnalysisStage`)."""

    def __init__(self, cfg: Config, plan: RunPlan, dataset: Dataset, runs_dir: Path, *,
                 sources: SyntheticSources | None = None,
                 sink: Sink | None = None, should_stop: StopFlag | None = None, node: str = ""):
        self.node = node  # where it runs, when an executor places it on a cluster node ("" = here)
        if plan.synthetic is not None:  # this run's own synthetic source and training settings
            cfg = replace(cfg, synthetic=replace(plan.synthetic, variants=[]))
        self.cfg, self.plan, self.ds = cfg, plan, dataset
        self.method, self.seed = plan.method, plan.seed
        self.device = dataset.device
        self.runs_dir = Path(runs_dir)
        self.dir = RunDir(self.runs_dir, plan.run_id)
        self.sources = sources
        self.should_stop = should_stop or (lambda: False)
        from .sinks import make_log_sinks  # [run] log: TensorBoard / W&B, imported only when named

        self.log_sinks = make_log_sinks(cfg, self.dir.path, plan.run_id, {
            "experiment": cfg.experiment.name, "method": plan.method, "seed": plan.seed, "variant": plan.variant,
            "label": f"{plan.label} seed {plan.seed}"}) if cfg.run.log else []
        self.emit = fan_out(self.dir.append_event, sink, *self.log_sinks)
        self.stage, self.round, self.throttle = "", 0, Throttle()
        self.per_epoch = steps_per_epoch(dataset.x_train.shape[0], cfg.train.batch_size)
        self.real_schedule = Schedule(
            optimizer=cfg.train.optimizer, lr=cfg.train.lr, epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size, momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay, milestones=tuple(cfg.train.milestones), gamma=cfg.train.gamma,
            warmup_steps=cfg.train.warmup * self.per_epoch)
        self.rewind_step = cfg.prune.rewind * (self.per_epoch if cfg.prune.rewind_unit == "epoch" else 1)
        self.fast = FastPath.of(cfg.run)
        self.score_data = None  # SNIP/GraSP's real batches, drawn once per run
        self.results: dict = {}

    # -- events --------------------------------------------------------------------------------
    def event(self, cls: type[Event], **fields) -> None:
        self.emit(cls(run_id=self.plan.run_id, **fields))

    def start_stage(self, stage: str) -> None:
        self.stage = stage
        self.stage_watch = time.perf_counter()
        self.event(StageStarted, stage=stage, round=self.round)

    def on_distill_progress(self, step: int, total: int, loss: float | None) -> None:
        self.on_epoch(step, total, torch.tensor(float("nan") if loss is None else loss))

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
                    on_epoch=self.on_epoch, should_stop=self.should_stop, fast=self.fast)
        acc, _ = evaluate(model, self.ds.x_test, self.ds.y_test, prepare=self.ds.prepare,
                          batch_size=self.cfg.run.eval_batch_size, fast=self.fast)
        return out, acc

    def train_synthetic(self, model, start: dict, mask: Mask, syn, key: int):
        from .synthetic.evaluate import train_on_synthetic  # the one recipe, shared with `dptui distill`

        restore(model, start)
        out = train_on_synthetic(model, syn, self.cfg.synthetic, seed=derive_seed(self.seed, "synthetic", key),
                                 mask=mask, on_epoch=self.on_epoch, should_stop=self.should_stop, fast=self.fast)
        acc, _ = evaluate(model, self.ds.x_test, self.ds.y_test, prepare=self.ds.prepare,
                          batch_size=self.cfg.run.eval_batch_size, fast=self.fast)
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

    def dense_cache_path(self) -> Path:
        """Where the dense baseline of this run's seed is cached (shared by the seed's methods)."""
        ident = self.dense_identity()
        ident["rewind_step"] = self.rewind_step
        return self.runs_dir / "cache" / "dense" / f"{config_hash(ident)}.pt"

    def dense_baseline(self, model, init: dict) -> dict:
        """Train the dense net on real data once per (data, model, train, rewind, seed, device); cached."""
        path = self.dense_cache_path()
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
        """Run (or resume) this run; its log sinks are closed however it ends (done, stopped, failed, raised)."""
        try:
            return self.execute_rounds()
        finally:
            for log_sink in self.log_sinks:
                log_sink.close()

    def execute_rounds(self) -> dict:
        cfg, method = self.cfg, self.method
        rounds = cfg.prune.rounds
        self.dir.create({**to_dict(cfg), "run": {**to_dict(cfg.run), "method": method, "seed": self.seed,
                                                  "device": str(self.device), "run_id": self.plan.run_id,
                                                  **({"variant": self.plan.variant} if self.plan.variant else {})}})
        old = self.dir.read_results()
        if old and old.get("status") == "done" and len(old.get("rounds", [])) == rounds \
                and not self.analysis_stage().pending(old, cfg.analysis):
            return old
        rows = self.dir.finished_rounds()[:rounds]
        wall = time.perf_counter()
        self.results = self.new_results(rows)
        self.results.update({k: old[k] for k in ANALYSIS_KEYS if old and k in old})
        self.event(RunStarted, experiment=cfg.experiment.name, method=method, seed=self.seed,
                   dataset=self.ds.name, model=cfg.model.name, device=str(self.device), rounds=rounds,
                   resumed_after=len(rows), variant=self.plan.variant, node=self.node)
        try:
            self.loop(rows)
            status = "done"
        except Stopped:
            status = "stopped"
        except Exception as err:  # noqa: BLE001 - a failed run is recorded; the experiment's other runs go on
            message = error_line(err)
            self.results.update(status="failed", error=message, traceback=traceback.format_exc())
            self.dir.write_results(self.results)
            self.event(RunFailed, error=message)
            return self.results
        self.results.update(status=status, updated_at=time.time())
        self.dir.write_results(self.results)
        self.event(RunDone, status=status, rounds_done=len(self.results["rounds"]),
                   wall_s=time.perf_counter() - wall)
        return self.results

    def new_results(self, rows: list[dict]) -> dict:
        return {
            "schema": 1, "run_id": self.plan.run_id, "experiment": self.cfg.experiment.name,
            "method": self.method, **({"variant": self.plan.variant} if self.plan.variant else {}),
            "seed": self.seed, "dataset": self.ds.name, "model": self.cfg.model.name,
            "device": str(self.device), **({"node": self.node} if self.node else {}),
            "threads": torch.get_num_threads(), "status": "running", "error": None,
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
            syn = self.sources.get(self.cfg.synthetic, self.on_distill_progress, self.should_stop)
            self.event(DistillDone, source=str(syn.meta.get("source")), images=len(syn),
                       distill_s=syn.meta.get("distill_s"), cached=bool(syn.meta.get("cached")))
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
            inner_s, inner_acc, compile_s = 0.0, None, 0.0  # compile_s: warm-up of compiled steps, apart
            if method == "imp":
                if pending and pending[0] == r - 1:
                    _, trained, inner_acc, inner_s = pending
                    restore(model, trained)
                else:
                    self.start_stage("inner")
                    out, inner_acc = self.train_real(model, rewind, mask, r - 1, start_step=self.rewind_step)
                    inner_s, compile_s = out.train_s, out.compile_s
            elif method == "distilled":
                self.start_stage("inner")
                out, inner_acc = self.train_synthetic(model, rewind, mask, syn, r - 1)
                inner_s, compile_s = out.train_s, out.compile_s
            if method in ("imp", "distilled"):
                self.check_finite(model, mask, r)
            self.start_stage("prune")
            watch = Stopwatch(self.device)
            kw = dict(total_round=r, fraction=cfg.prune.fraction, scope=cfg.prune.scope,
                      output_fraction=cfg.prune.output_fraction)
            if method == "random":
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "random", r))
                mask = {n: m.to(self.device) for n, m in random_prune(mask, gen, output_name=out_name, **kw).items()}
            elif method in AT_INIT_METHODS:
                restore(model, init)
                mask = self.prune_at_init(model, kw)
            else:
                mask = magnitude_prune(model, mask, **kw)
            prune_s = watch.elapsed()
            restore(model, rewind)
            # At init, each round's mask is one scoring of the initialisation, not the sum of the rounds before.
            t2m = dense["rewind_s"] + prune_s if method in AT_INIT_METHODS else t2m + inner_s + prune_s
            val_acc = val_s = None
            if cfg.prune.validate == "every" or (cfg.prune.validate == "final" and r == cfg.prune.rounds):
                self.start_stage("validate")
                out, val_acc = self.train_real(model, rewind, mask, r, start_step=self.rewind_step)
                val_s = out.train_s
                compile_s += out.compile_s
                if method == "imp":
                    pending = (r, snapshot(model), val_acc, val_s)
            row = {
                "round": r, "sparsity": sparsity(mask),
                "remaining": sum(int(m.sum()) for m in mask.values()),
                "inner_train_s": inner_s, "inner_test_acc": inner_acc, "prune_s": prune_s,
                "val_acc": val_acc, "val_train_s": val_s, "compile_s": compile_s,
                "time_to_mask_s": t2m, "time_to_mask_validated_s": None if val_s is None else t2m + val_s,
                "layer_sparsity": layer_sparsity(mask),
            }
            self.dir.save_round(r, mask_to_cpu(mask), row)
            self.results["rounds"].append(row)
            self.results["updated_at"] = time.time()
            self.dir.write_results(self.results)
            self.event(RoundDone, row=row)
        self.analysis_stage().analyze(self.results, model, init, dense, cfg.analysis)

    def prune_at_init(self, model, kw: dict) -> Mask:
        """SNIP / GraSP / SynFlow, one shot from the model's current (initial) weights to round ``kw``'s target;
        SNIP and GraSP score on the same fixed real batches every round."""
        from .pruning_at_init import one_shot_prune, real_batches

        p = self.cfg.prune
        if self.method != "synflow" and self.score_data is None:
            self.score_data = real_batches(self.ds, batches=p.score_batches, batch_size=p.score_batch_size,
                                           seed=derive_seed(self.seed, "score"), device=self.device)
        return one_shot_prune(self.method, model, full_mask(model), self.score_data,
                              iterations=p.synflow_iterations, temperature=p.grasp_temperature,
                              input_shape=tuple(self.ds.shape), **kw)

    # -- analyses --------------------------------------------------------------------------------
    def analysis_stage(self) -> AnalysisStage:
        inputs = AnalysisInputs(
            dataset=self.ds, schedule=self.real_schedule, seed=self.seed, per_epoch=self.per_epoch,
            rewind_unit=self.cfg.prune.rewind_unit, rewind=self.cfg.prune.rewind, rewind_step=self.rewind_step,
            eval_batch_size=self.cfg.run.eval_batch_size, augment=self.real_augment(), run_dir=self.dir,
            rewind_cache=self.runs_dir / "cache" / "rewind", dense_identity=self.dense_identity(), fast=self.fast)
        return AnalysisStage(inputs, stage=self.start_stage, epoch=self.on_epoch, should_stop=self.should_stop,
                             set_round=lambda r: setattr(self, "round", r), event=self.event)

    def run_analyses(self, spec) -> dict:
        """Analyses on a run whose rounds are on disk (``dptui analyze``); returns the updated results."""
        old = self.dir.read_results()
        if not old or not old.get("rounds"):
            raise DPError(f"{self.dir.path}: no finished rounds to analyse; run it first")
        done = len(old["rounds"])
        late = [r for r in [*spec.instability_rounds, *spec.histogram_rounds, *spec.hessian_rounds,
                            *spec.landscape_rounds] if r > done]
        if late:
            raise DPError(f"{self.dir.path}: round {late[0]} is not finished (the run has {done} rounds)")
        self.results = old
        model, init, dense = self.start_point()
        try:
            self.analysis_stage().analyze(self.results, model, init, dense, spec)
        finally:
            self.results["updated_at"] = time.time()
            self.dir.write_results(self.results)
            for log_sink in self.log_sinks:
                log_sink.close()
        return self.results


def run_experiment(cfg: Config, runs_dir: str | Path, *, data_root: str | Path | None = None,
                   sink: Sink | None = None, should_stop: StopFlag | None = None,
                   only: list[str] | None = None, checked: Checked | None = None) -> list[dict]:
    """Run (or resume) every method x seed of ``cfg``; returns each run's results dict.

    ``checked``: the result of :func:`dpcore.validate.check_experiment` when the caller checked the
    experiment already (else it is checked here, before the first run starts)."""
    apply_threads(cfg)
    checked = checked or check_experiment(cfg, runs_dir, data_root)
    sources = SyntheticSources(cfg, Path(runs_dir), data_root, checked.dataset, checked.files)
    results = []
    for plan in plan_runs(cfg, checked.device):
        if only is not None and plan.run_id not in only:
            continue
        if should_stop is not None and should_stop():
            break
        run = Run(cfg, plan, checked.dataset, Path(runs_dir), sources=sources, sink=sink, should_stop=should_stop)
        results.append(run.execute())
    return results
