"""The analyses stage of a run (section 3.3 and appendix B of the paper), after its rounds.

The ``[analysis]`` section's analyses: instability of chosen rounds' masks at chosen rewind points, weight
histograms, figures. Each is saved into results.json as it finishes, and a resumed run (or
``dptui analyze``) does only the missing ones. :class:`AnalysisStage` gets everything it needs explicitly
(:class:`AnalysisInputs`, progress hooks, an event emitter); :meth:`dpcore.engine.Run.analysis_stage`
builds it for a run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..config import AnalysisConfig
from ..data.dataset import Dataset
from ..errors import DPError
from ..events import AnalysisDone
from ..masks import Mask, full_mask
from ..safe_load import safe_torch_load
from ..store import RunDir, atomic_torch_save, config_hash
from ..training import Augment, EpochCallback, FastPath, Schedule, derive_seed, restore, train
from .instability import Hooks, instability_analysis
from .weights import weight_histograms


@dataclass(frozen=True)
class AnalysisInputs:
    """What the analyses of one run read: its data, real-data schedule, seed, rewind point, store."""

    dataset: Dataset
    schedule: Schedule  # the real-data training schedule (instability trains two copies with it)
    seed: int
    per_epoch: int  # steps per epoch of real training
    rewind_unit: str  # "epoch" or "step"
    rewind: int  # the run's own rewind point k, in rewind_unit
    rewind_step: int  # ... as a global step
    eval_batch_size: int
    augment: Augment | None
    run_dir: RunDir
    rewind_cache: Path  # <runs>/cache/rewind: dense states at other rewind steps
    dense_identity: dict  # what determines the dense training of this seed
    fast: FastPath | None = None  # the run's fast path: the replays train as the run's trainings did


class AnalysisStage:
    def __init__(self, inputs: AnalysisInputs, *, stage: Callable[[str], None], epoch: EpochCallback,
                 should_stop: Callable[[], bool], set_round: Callable[[int], None],
                 event: Callable[..., None]):
        self.inputs = inputs
        self.hooks = Hooks(stage=stage, epoch=epoch, should_stop=should_stop)
        self.set_round, self.event = set_round, event

    def rewind_steps(self, spec: AnalysisConfig) -> list[tuple[int, int]]:
        """(k, global step) of each rewind point the instability analysis starts from."""
        unit = self.inputs.per_epoch if self.inputs.rewind_unit == "epoch" else 1
        return [(k, k * unit) for k in sorted(set(spec.instability_rewinds or [self.inputs.rewind]))]

    def instability_pending(self, res: dict, spec: AnalysisConfig) -> list[tuple[int, int, int]]:
        """(round, k, step) of each requested instability analysis not yet in ``res``."""
        done = {(e["round"], e["rewind"]["step"], len(e["alphas"]), e["bn_recompute"])
                for e in res.get("instability", [])}
        return [(r, k, step) for r in sorted(set(spec.instability_rounds)) for k, step in self.rewind_steps(spec)
                if (r, step, spec.alphas, spec.bn_recompute) not in done]

    @staticmethod
    def ticket_pending(res: dict, spec: AnalysisConfig) -> list[tuple[int, bool, bool]]:
        """(round, needs the Hessian, needs the landscape slice) of each trained-ticket analysis not in ``res``."""
        have_h = {e["round"] for e in res.get("hessian", [])
                  if (e["iterations_max"], e["batches"]) == (spec.hessian_iterations, spec.hessian_batches)}
        have_l = {e["round"] for e in res.get("landscape", [])
                  if (e["grid"], e["span"]) == (spec.landscape_grid, spec.landscape_span)}
        rounds = sorted(set(spec.hessian_rounds) | set(spec.landscape_rounds))
        out = [(r, r in spec.hessian_rounds and r not in have_h, r in spec.landscape_rounds and r not in have_l)
               for r in rounds]
        return [t for t in out if t[1] or t[2]]

    def pending(self, res: dict, spec: AnalysisConfig) -> bool:
        if self.ticket_pending(res, spec):
            return True
        hist = res.get("weight_histograms") or {}
        have = {h["round"] for h in hist.get("rounds", [])}
        figures = res.get("figures")
        return bool(self.instability_pending(res, spec)
                    or (spec.histogram_rounds and (not set(spec.histogram_rounds) <= have or hist.get("bins") != spec.bins))
                    or (spec.figures and (not figures or not all((self.inputs.run_dir.path / f).exists() for f in figures))))

    def rewind_state(self, model, step: int, init: dict, dense: dict) -> dict:
        """The dense training's state at global ``step`` (init for 0); other steps than the run's own
        are captured by a short dense training and cached beside the dense baseline."""
        if step == 0:
            return init
        if step == self.inputs.rewind_step and dense.get("rewind") is not None:
            return dense["rewind"]
        ident = dict(self.inputs.dense_identity)
        ident["capture_step"] = step
        path = self.inputs.rewind_cache / f"{config_hash(ident)}.pt"
        if path.exists():
            return safe_torch_load(path)["state"]
        state, seconds = self.capture_rewind(model, init, step)
        atomic_torch_save(path, {"state": state, "capture_s": seconds, "step": step})
        return state

    def capture_rewind(self, model, init: dict, step: int) -> tuple[dict, float]:
        """Replay the dense training (same seed, order and schedule) just far enough to reach ``step``."""
        self.hooks.stage("rewind")
        restore(model, init)
        schedule = replace(self.inputs.schedule, epochs=-(-step // self.inputs.per_epoch))
        ds = self.inputs.dataset
        out = train(model, ds.x_train, ds.y_train, schedule=schedule, seed=derive_seed(self.inputs.seed, "real", 0),
                    prepare=ds.prepare, mask=full_mask(model), augment=self.inputs.augment, capture_step=step,
                    on_epoch=self.hooks.epoch, should_stop=self.hooks.should_stop, fast=self.inputs.fast)
        if out.capture is None:
            raise DPError(f"rewind step {step} is past the end of training ({out.steps} steps)")
        return out.capture, out.capture_s or 0.0

    def mask_at(self, r: int, model) -> Mask:
        if r == 0:
            return full_mask(model)
        return {n: m.to(self.inputs.dataset.device) for n, m in self.inputs.run_dir.load_mask(r).items()}

    def ticket_analyses(self, results: dict, model, init: dict, dense: dict, spec: AnalysisConfig, r: int,
                        hessian: bool, landscape: bool) -> None:
        """Train round ``r``'s mask on real data from the run's rewind point (the same training as its
        validation: same start, mask, data order and seed) and measure the trained ticket: its top Hessian
        eigenvalue on fixed real batches, and/or a 2-D loss slice on the test split."""
        from ..pruning_at_init import real_batches
        from ..training import snapshot
        from .hessian import top_hessian_eigenvalue
        from .landscape import slice_2d

        inp, ds = self.inputs, self.inputs.dataset
        mask = self.mask_at(r, model)
        restore(model, self.rewind_state(model, inp.rewind_step, init, dense))
        self.hooks.stage("ticket")
        train(model, ds.x_train, ds.y_train, schedule=inp.schedule, seed=derive_seed(inp.seed, "real", r),
              prepare=ds.prepare, mask=mask, augment=inp.augment, start_step=inp.rewind_step,
              on_epoch=self.hooks.epoch, should_stop=self.hooks.should_stop, fast=inp.fast)
        sparsity = self.sparsity_at(results, r)
        if hessian:
            self.hooks.stage("hessian")
            batches = real_batches(ds, batches=spec.hessian_batches, batch_size=inp.schedule.batch_size,
                                   seed=derive_seed(inp.seed, "hessian"), device=ds.device)
            h = top_hessian_eigenvalue(model, batches, iterations=spec.hessian_iterations,
                                       seed=derive_seed(inp.seed, "hessian", r) & 0x7FFFFFFF, mask=mask)
            entry = {"round": r, "sparsity": sparsity, "iterations_max": spec.hessian_iterations,
                     "batches": spec.hessian_batches, **h}
            results["hessian"] = sorted([e for e in results.get("hessian", []) if e["round"] != r] + [entry],
                                        key=lambda e: e["round"])
            inp.run_dir.write_results(results)
            self.event(AnalysisDone, analysis="hessian", round=r,
                       result={"sparsity": sparsity, "eigenvalue": h["eigenvalue"], "converged": h["converged"]})
        if landscape:
            self.hooks.stage("landscape")
            sl = slice_2d(model, snapshot(model), ds.x_test, ds.y_test, grid=spec.landscape_grid,
                          span=spec.landscape_span, seed=derive_seed(inp.seed, "landscape", r) & 0x7FFFFFFF,
                          mask=mask, prepare=ds.prepare, batch_size=inp.eval_batch_size)
            losses = [v for row in sl["loss"] for v in row]
            c = spec.landscape_grid // 2
            entry = {"round": r, "sparsity": sparsity, "grid": spec.landscape_grid, "span": spec.landscape_span,
                     **sl, "centre_loss": sl["loss"][c][c], "mean_rise": sum(losses) / len(losses) - sl["loss"][c][c]}
            results["landscape"] = sorted([e for e in results.get("landscape", []) if e["round"] != r] + [entry],
                                          key=lambda e: e["round"])
            inp.run_dir.write_results(results)
            self.event(AnalysisDone, analysis="landscape", round=r,
                       result={"sparsity": sparsity, "mean_rise": entry["mean_rise"]})

    @staticmethod
    def sparsity_at(results: dict, r: int) -> float:
        rows = {row["round"]: row for row in results["rounds"]}
        return rows[r]["sparsity"] if r in rows else 0.0

    def analyze(self, results: dict[str, Any], model, init: dict, dense: dict, spec: AnalysisConfig) -> None:
        """Run the analyses ``spec`` asks for that ``results`` lacks; updates it and saves after each one."""
        inp = self.inputs
        unit = inp.rewind_unit
        for r, k, step in self.instability_pending(results, spec):
            self.set_round(r)
            start = self.rewind_state(model, step, init, dense)
            res = instability_analysis(model, start, self.mask_at(r, model), inp.dataset, schedule=inp.schedule,
                                       seed=derive_seed(inp.seed, "instability"), start_step=step,
                                       augment=inp.augment, alphas=spec.alphas, bn_recompute=spec.bn_recompute,
                                       eval_batch_size=inp.eval_batch_size, hooks=self.hooks, fast=inp.fast)
            entry = {"round": r, "sparsity": self.sparsity_at(results, r), "rewind": {"k": k, "unit": unit, "step": step},
                     "alphas": res.curve.alphas, "test_acc": res.curve.test_acc, "test_loss": res.curve.test_loss,
                     "instability": res.curve.instability, "barrier": res.curve.barrier,
                     "end_acc": list(res.end_acc), "end_loss": list(res.end_loss), "bn_recompute": spec.bn_recompute,
                     "train_s": list(res.train_s), "eval_s": res.eval_s, "copy_seeds": list(res.seeds)}
            entries = [e for e in results.get("instability", [])
                       if (e["round"], e["rewind"]["step"], len(e["alphas"]), e["bn_recompute"])
                       != (r, step, spec.alphas, spec.bn_recompute)] + [entry]
            results["instability"] = sorted(entries, key=lambda e: (e["round"], e["rewind"]["step"],
                                                                    len(e["alphas"]), e["bn_recompute"]))
            inp.run_dir.write_results(results)
            self.event(AnalysisDone, analysis="instability", round=r,
                       result={k2: entry[k2] for k2 in ("sparsity", "rewind", "instability", "barrier", "end_acc")})
        for r, hessian, landscape in self.ticket_pending(results, spec):
            self.set_round(r)
            self.ticket_analyses(results, model, init, dense, spec, r, hessian, landscape)
        if spec.histogram_rounds:
            old = results.get("weight_histograms") or {}
            rounds = set(spec.histogram_rounds)
            if old.get("bins") == spec.bins:
                rounds |= {h["round"] for h in old.get("rounds", [])}
            results["weight_histograms"] = weight_histograms(
                init, {r: self.mask_at(r, model) for r in sorted(rounds)}, {r: self.sparsity_at(results, r) for r in rounds},
                bins=spec.bins)
            inp.run_dir.write_results(results)
            self.event(AnalysisDone, analysis="histograms", round=max(rounds), result={"rounds": sorted(rounds)})
        if spec.figures:
            from .figures import run_figures

            self.hooks.stage("figures")
            paths = run_figures(results, inp.run_dir.path / "figures")
            results["figures"] = [str(p.relative_to(inp.run_dir.path)) for p in paths]
            inp.run_dir.write_results(results)
            last = max((row["round"] for row in results["rounds"]), default=0)
            self.event(AnalysisDone, analysis="figures", round=last, result={"files": results["figures"]})
