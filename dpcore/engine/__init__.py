"""The pruning engine: Algorithm 1 for every pruning method (:mod:`dpcore.methods`), plus the dense baseline.

Synchronous; reports progress only through typed events sent to a sink; honours a stop flag between steps.
Knows nothing of any UI. A run resumes after its last finished round on disk. Users go through the front
door, :class:`dpcore.experiment.Experiment`; executors call :mod:`.tasks`.

- :mod:`.plan`: a run's identity (its id is the hash of it) and an experiment's runs.
- :mod:`.run`: one run, round after round: the method's inner training of m_{r-1} from the rewind point
  (real data for imp, synthetic for distilled, none for random and pruning at init), the method's pruning,
  rewind, and optionally the validation of m_r (trained on real data, tested); then the ``[analysis]``.
- :mod:`.sources`: the synthetic sets, made once per source and shared by the runs that use it.
- :mod:`.tasks`: what executors run: one run, and the shared stages (dense baseline, synthetic set) first.

The whole experiment is checked before its first training step (:mod:`dpcore.validate`); a failure inside a
run (a source that diverges, an exception in training) fails that run and those that share its source, and
the others go on.
"""

from .plan import ENGINE_VERSION, RunPlan, plan_runs, run_identity
from .run import ANALYSIS_KEYS, Run
from .sources import SourceFailed, SyntheticSources, error_line
from .tasks import SharedStage, analyze_run, execute_run, finished_results, make_stage, shared_stages

__all__ = ["ANALYSIS_KEYS", "ENGINE_VERSION", "Run", "RunPlan", "SharedStage", "SourceFailed", "SyntheticSources",
           "analyze_run", "error_line", "execute_run", "finished_results", "make_stage", "plan_runs", "run_identity",
           "shared_stages"]
