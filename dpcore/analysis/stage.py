"""The analyses stage of a run (section 3.3 and appendix B of the paper), after its rounds.

The ``[analysis]`` section's analyses: instability of chosen rounds' masks at chosen rewind points, weight
histograms, figures. Each is saved into results.json as it finishes, and a resumed run (or
``dptui analyze``) does only the missing ones. :class:`AnalysisStage` is a mixin of
:class:`dpcore.engine.Run`, whose state (config, dataset, run dir, results, events) it uses.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..config import AnalysisConfig
from ..errors import DPError
from ..events import AnalysisDone
from ..masks import Mask, full_mask
from ..safe_load import safe_torch_load
from ..store import atomic_torch_save, config_hash
from ..training import derive_seed, restore, train
from .instability import Hooks, instability_analysis
from .weights import weight_histograms


class AnalysisStage:
    def rewind_steps(self, spec: AnalysisConfig) -> list[tuple[int, int]]:
        """(k, global step) of each rewind point the instability analysis starts from."""
        unit = self.per_epoch if self.cfg.prune.rewind_unit == "epoch" else 1
        return [(k, k * unit) for k in sorted(set(spec.instability_rewinds or [self.cfg.prune.rewind]))]

    def instability_pending(self, res: dict, spec: AnalysisConfig) -> list[tuple[int, int, int]]:
        """(round, k, step) of each requested instability analysis not yet in ``res``."""
        done = {(e["round"], e["rewind"]["step"], len(e["alphas"]), e["bn_recompute"])
                for e in res.get("instability", [])}
        return [(r, k, step) for r in sorted(set(spec.instability_rounds)) for k, step in self.rewind_steps(spec)
                if (r, step, spec.alphas, spec.bn_recompute) not in done]

    def analyses_pending(self, res: dict, spec: AnalysisConfig) -> bool:
        hist = res.get("weight_histograms") or {}
        have = {h["round"] for h in hist.get("rounds", [])}
        figures = res.get("figures")
        return bool(self.instability_pending(res, spec)
                    or (spec.histogram_rounds and (not set(spec.histogram_rounds) <= have or hist.get("bins") != spec.bins))
                    or (spec.figures and (not figures or not all((self.dir.path / f).exists() for f in figures))))

    def rewind_state(self, model, step: int, init: dict, dense: dict) -> dict:
        """The dense training's state at global ``step`` (init for 0); other steps than the run's own
        are captured by a short dense training and cached beside the dense baseline."""
        if step == 0:
            return init
        if step == self.rewind_step and dense.get("rewind") is not None:
            return dense["rewind"]
        ident = self.dense_identity()
        ident["capture_step"] = step
        path = self.runs_dir / "cache" / "rewind" / f"{config_hash(ident)}.pt"
        if path.exists():
            return safe_torch_load(path)["state"]
        state, seconds = self.capture_rewind(model, init, step)
        atomic_torch_save(path, {"state": state, "capture_s": seconds, "step": step})
        return state

    def capture_rewind(self, model, init: dict, step: int) -> tuple[dict, float]:
        """Replay the dense training (same seed, order and schedule) just far enough to reach ``step``."""
        self.start_stage("rewind")
        restore(model, init)
        schedule = replace(self.real_schedule, epochs=-(-step // self.per_epoch))
        out = train(model, self.ds.x_train, self.ds.y_train, schedule=schedule, seed=derive_seed(self.seed, "real", 0),
                    prepare=self.ds.prepare, mask=full_mask(model), augment=self.real_augment(), capture_step=step,
                    on_epoch=self.on_epoch, should_stop=self.should_stop)
        if out.capture is None:
            raise DPError(f"rewind step {step} is past the end of training ({out.steps} steps)")
        return out.capture, out.capture_s or 0.0

    def mask_at(self, r: int, model) -> Mask:
        if r == 0:
            return full_mask(model)
        return {n: m.to(self.device) for n, m in self.dir.load_mask(r).items()}

    def sparsity_at(self, r: int) -> float:
        rows = {row["round"]: row for row in self.results["rounds"]}
        return rows[r]["sparsity"] if r in rows else 0.0

    def analyze(self, model, init: dict, dense: dict, spec: AnalysisConfig) -> None:
        """Run the analyses ``spec`` asks for that ``self.results`` lacks; saves after each one."""
        unit = self.cfg.prune.rewind_unit
        hooks = Hooks(stage=self.start_stage, epoch=self.on_epoch, should_stop=self.should_stop)
        for r, k, step in self.instability_pending(self.results, spec):
            self.round = r
            start = self.rewind_state(model, step, init, dense)
            res = instability_analysis(model, start, self.mask_at(r, model), self.ds, schedule=self.real_schedule,
                                       seed=derive_seed(self.seed, "instability"), start_step=step,
                                       augment=self.real_augment(), alphas=spec.alphas, bn_recompute=spec.bn_recompute,
                                       eval_batch_size=self.cfg.run.eval_batch_size, hooks=hooks)
            entry = {"round": r, "sparsity": self.sparsity_at(r), "rewind": {"k": k, "unit": unit, "step": step},
                     "alphas": res.curve.alphas, "test_acc": res.curve.test_acc, "test_loss": res.curve.test_loss,
                     "instability": res.curve.instability, "barrier": res.curve.barrier,
                     "end_acc": list(res.end_acc), "end_loss": list(res.end_loss), "bn_recompute": spec.bn_recompute,
                     "train_s": list(res.train_s), "eval_s": res.eval_s, "copy_seeds": list(res.seeds)}
            entries = [e for e in self.results.get("instability", [])
                       if (e["round"], e["rewind"]["step"], len(e["alphas"]), e["bn_recompute"])
                       != (r, step, spec.alphas, spec.bn_recompute)] + [entry]
            self.results["instability"] = sorted(entries, key=lambda e: (e["round"], e["rewind"]["step"],
                                                                         len(e["alphas"]), e["bn_recompute"]))
            self.dir.write_results(self.results)
            self.event(AnalysisDone, analysis="instability", round=r,
                       result={k2: entry[k2] for k2 in ("sparsity", "rewind", "instability", "barrier", "end_acc")})
        if spec.histogram_rounds:
            old = self.results.get("weight_histograms") or {}
            rounds = set(spec.histogram_rounds)
            if old.get("bins") == spec.bins:
                rounds |= {h["round"] for h in old.get("rounds", [])}
            self.results["weight_histograms"] = weight_histograms(
                init, {r: self.mask_at(r, model) for r in sorted(rounds)}, {r: self.sparsity_at(r) for r in rounds},
                bins=spec.bins)
            self.dir.write_results(self.results)
            self.event(AnalysisDone, analysis="histograms", round=max(rounds), result={"rounds": sorted(rounds)})
        if spec.figures:
            from .figures import run_figures

            self.start_stage("figures")
            paths = run_figures(self.results, self.dir.path / "figures")
            self.results["figures"] = [str(p.relative_to(self.dir.path)) for p in paths]
            self.dir.write_results(self.results)
            self.event(AnalysisDone, analysis="figures", round=self.round, result={"files": self.results["figures"]})

    def run_analyses(self, spec: AnalysisConfig) -> dict:
        """Analyses on a run whose rounds are on disk (``dptui analyze``); returns the updated results."""
        old = self.dir.read_results()
        if not old or not old.get("rounds"):
            raise DPError(f"{self.dir.path}: no finished rounds to analyse; run it first")
        done = len(old["rounds"])
        late = [r for r in [*spec.instability_rounds, *spec.histogram_rounds] if r > done]
        if late:
            raise DPError(f"{self.dir.path}: round {late[0]} is not finished (the run has {done} rounds)")
        self.results = old
        model, init, dense = self.start_point()
        try:
            self.analyze(model, init, dense, spec)
        finally:
            self.results["updated_at"] = time.time()
            self.dir.write_results(self.results)
        return self.results

