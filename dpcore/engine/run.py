"""One run: a method x a seed of an experiment, round after round (Algorithm 1), resumable after any round."""

from __future__ import annotations

import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from ..analysis.stage import AnalysisInputs, AnalysisStage
from ..augment import crop_flip
from ..claims import Claim, claim_path
from ..config import Config, to_dict
from ..data.dataset import Dataset
from ..errors import DPError, TrainingDiverged
from ..events import (CompileFallback, DenseDone, EpochProgress, Event, RoundDone, RoundStarted, RunDone, RunFailed, RunStarted,
                      Sink, StageStarted, Waiting, fan_out)
from ..masks import Mask, full_mask, layer_sparsity, mask_to_cpu, prunable, remaining_target, sparsity
from ..methods import Inner, get_method
from ..parallel import peak_memory_mb
from ..models import build_model
from ..safe_load import safe_torch_load
from ..store import RunDir, atomic_torch_save, config_hash
from ..training import (FastPath, Schedule, Stopped, Stopwatch, derive_seed, evaluate, restore, snapshot,
                        steps_per_epoch, train, use_memory_format)
from .plan import RunPlan
from .sources import SyntheticSources, error_line

StopFlag = Callable[[], bool]
ANALYSIS_KEYS = ("instability", "weight_histograms", "hessian", "landscape", "figures")  # written by analyses


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
        self.strategy = get_method(plan.method)()  # the pruning method (dpcore.methods), one per run
        self.sink = sink
        from ..sinks import make_log_sinks  # [run] log: TensorBoard / W&B, imported only when named

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
        self.results: dict = {}
        self.fallbacks: set[str] = set()  # compile errors already reported
        self.init: dict = {}  # the initial weights, and the dense baseline (set by start_point)
        self.dense: dict = {}

    # -- events --------------------------------------------------------------------------------
    def event(self, cls: type[Event], **fields) -> None:
        self.emit(cls(run_id=self.plan.run_id, **fields))

    def start_stage(self, stage: str) -> None:
        self.stage = stage
        self.stage_watch = time.perf_counter()
        self.event(StageStarted, stage=stage, round=self.round)

    def waiting(self, what: str):
        """An ``on_wait`` for a claim another process holds: one Waiting event to the sink (not the run's file)."""
        def on_wait(holder) -> None:
            if self.sink is not None:
                self.sink(Waiting(run_id=self.plan.run_id, what=what, holder=holder.line() if holder else ""))
        return on_wait

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
                            **self.cfg.model.options).to(self.device)
        use_memory_format(model, self.fast.channels_last)  # once per run: its parameters keep their storage
        return model

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
        from ..synthetic.evaluate import train_on_synthetic  # the one recipe, shared with `dptui distill`

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
        lr, key, where = self.strategy.divergence(self)
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
        """Train the dense net on real data once per (data, model, train, rewind, seed, device); cached. Made under
        a claim on the cache entry, so two processes on one store train it once (the second waits, then loads)."""
        path = self.dense_cache_path()
        if not path.exists():
            with Claim(claim_path(self.runs_dir, "dense", path.stem), self.waiting(f"the dense baseline of seed {self.seed}")):
                if not path.exists():
                    self.start_stage("dense")
                    out, acc = self.train_real(model, init, full_mask(model), 0, start_step=0,
                                               capture_step=self.rewind_step if self.rewind_step else None)
                    dense = {"test_acc": acc, "train_s": out.train_s, "trained": snapshot(model),
                             "rewind": out.capture, "rewind_s": out.capture_s or 0.0}
                    atomic_torch_save(path, dense)
                    self.event(DenseDone, test_acc=acc, train_s=out.train_s, cached=False)
                    return dense
        dense = safe_torch_load(path)
        self.event(DenseDone, test_acc=dense["test_acc"], train_s=dense["train_s"], cached=True)
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
        old = self.finished()
        if old is not None:
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
        self.results.update(status=status, updated_at=time.time(), peak_memory_mb=round(peak_memory_mb(self.device.type), 1))
        self.dir.write_results(self.results)
        self.event(RunDone, status=status, rounds_done=len(self.results["rounds"]),
                   wall_s=time.perf_counter() - wall)
        return self.results

    def finished(self) -> dict | None:
        """The run's results when it is done (every round, every analysis asked for), else None."""
        old = self.dir.read_results()
        if old and old.get("status") == "done" and len(old.get("rounds", [])) == self.cfg.prune.rounds \
                and not self.analysis_stage().pending(old, self.cfg.analysis):
            return old
        return None

    def new_results(self, rows: list[dict]) -> dict:
        return {
            "schema": 1, "run_id": self.plan.run_id, "experiment": self.cfg.experiment.name,
            "method": self.method, **({"variant": self.plan.variant} if self.plan.variant else {}),
            "seed": self.seed, "dataset": self.ds.name, "model": self.cfg.model.name,
            "device": str(self.device), **({"node": self.node} if self.node else {}),
            "threads": torch.get_num_threads(), "train_images": int(self.ds.x_train.shape[0]),
            "status": "running", "error": None,
            "rounds_planned": self.cfg.prune.rounds, "fraction": self.cfg.prune.fraction,
            "rewind": {"k": self.cfg.prune.rewind, "unit": self.cfg.prune.rewind_unit, "step": self.rewind_step},
            "dense": None, "synthetic": None, "rounds": list(rows),
            "started_at": time.time(), "updated_at": time.time(),
        }

    def start_point(self) -> tuple[torch.nn.Module, dict, dict]:
        """The initialised model, its initial state and the (cached) dense baseline."""
        model = self.new_model()
        init = self.init = snapshot(model)
        self.results["prunable_weights"] = sum(p.numel() for p in prunable(model).values())
        dense = self.dense = self.dense_baseline(model, init)
        self.results["dense"] = {"test_acc": dense["test_acc"], "train_s": dense["train_s"]}
        self.results["rewind"]["rewind_s"] = dense["rewind_s"]
        return model, init, dense

    def loop(self, rows: list[dict]) -> None:
        cfg, strategy = self.cfg, self.strategy
        model, init, dense = self.start_point()
        rewind = init if self.rewind_step == 0 else dense["rewind"]
        strategy.prepare(self)
        start = len(rows)
        mask = full_mask(model) if start == 0 else {n: m.to(self.device) for n, m in self.dir.load_mask(start).items()}
        t2m = rows[-1]["time_to_mask_s"] if rows else dense["rewind_s"]
        for r in range(start + 1, cfg.prune.rounds + 1):
            self.round = r
            restore(model, rewind)  # every round starts with the model at the rewind point
            total = sum(m.numel() for m in mask.values())
            self.event(RoundStarted, round=r, rounds=cfg.prune.rounds,
                       target_sparsity=1 - remaining_target(total, cfg.prune.fraction, r) / total)
            inner = strategy.inner(self, model, rewind, mask, r)
            if inner is not None:
                self.check_finite(model, mask, r)
            self.start_stage("prune")
            watch = Stopwatch(self.device)
            mask = strategy.prune(self, model, mask, r, dict(total_round=r, fraction=cfg.prune.fraction,
                                                             scope=cfg.prune.scope,
                                                             output_fraction=cfg.prune.output_fraction))
            prune_s = watch.elapsed()
            restore(model, rewind)
            t2m = strategy.time_to_mask(t2m, inner, prune_s, dense["rewind_s"])
            val_acc = val_s = None
            compile_s = inner.compile_s if inner else 0.0  # warm-up of compiled steps, kept apart
            trainings = [inner] if inner else []
            if cfg.prune.validate == "every" or (cfg.prune.validate == "final" and r == cfg.prune.rounds):
                self.start_stage("validate")
                out, val_acc = self.train_real(model, rewind, mask, r, start_step=self.rewind_step)
                val_s, compile_s = out.train_s, compile_s + out.compile_s
                trainings.append(Inner.of(out, val_acc))
                strategy.validated(self, r, model, val_acc, val_s)
            row = self.round_row(r, mask, inner, prune_s, val_acc, val_s, compile_s, t2m)
            asked = [t for t in trainings if t.compiled is not None]
            if asked:  # whether the round's steps ran compiled (False: a fallback, its times are eager ones)
                row["compiled"] = all(t.compiled for t in asked)
            graphed = [t.graphed for t in trainings if t.graphed is not None]
            if graphed:  # whether its synthetic steps replayed as CUDA graphs (False: a failed capture, eager times)
                row["cuda_graphs"] = all(graphed)
            self.report_fallbacks(r, [(path, e) for t in trainings
                                      for path, e in (("compile", t.fallback), ("cuda_graphs", t.graph_fallback)) if e])
            self.dir.save_round(r, mask_to_cpu(mask), row)
            self.results["rounds"].append(row)
            self.results["updated_at"] = time.time()
            self.dir.write_results(self.results)
            self.event(RoundDone, row=row)
        self.analysis_stage().analyze(self.results, model, init, dense, cfg.analysis)

    def report_fallbacks(self, r: int, errors: list[tuple[str, str]]) -> None:
        """One CompileFallback event per run (and per new error), the first round it happened in; each error with
        the fast path that failed ("compile" or "cuda_graphs")."""
        for path, error in errors:
            if error not in self.fallbacks:
                self.fallbacks.add(error)
                self.event(CompileFallback, round=r, error=error, path=path)

    @staticmethod
    def round_row(r: int, mask: Mask, inner: Inner | None, prune_s: float, val_acc, val_s, compile_s: float,
                  t2m: float) -> dict:
        return {
            "round": r, "sparsity": sparsity(mask),
            "remaining": sum(int(m.sum()) for m in mask.values()),
            "inner_train_s": inner.train_s if inner else 0.0, "inner_test_acc": inner.test_acc if inner else None,
            "prune_s": prune_s, "val_acc": val_acc, "val_train_s": val_s, "compile_s": compile_s,
            "time_to_mask_s": t2m, "time_to_mask_validated_s": None if val_s is None else t2m + val_s,
            "layer_sparsity": layer_sparsity(mask),
        }

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
