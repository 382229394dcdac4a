"""The driver side of the Ray executor: shared stages first, then one task per run, their events and files
written into this machine's run store as they stream back; lost tasks resubmitted, cancels passed on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dpcore.claims import Claim, claim_path
from dpcore.engine import RunPlan, SharedStage, error_line, finished_results, shared_stages
from dpcore.events import Sink, event_from_dict
from dpcore.store import RunDir
from dpcore.synthetic.provider import synthetic_cache_dir
from dpcore.validate import Checked

from ..files import read_tree, write_tree
from ..local import record_failure, say_waiting
from .cluster import check_resources, cluster_status, connect, ray_address
from .worker import NOT_SENT, CancelBoard, run_task, stage_task

if TYPE_CHECKING:
    from dpcore.experiment import Experiment

POLL_S = 0.5
# A run's task waits once this many of its messages are unread by the driver (memory stays bounded when the
# driver is slow; 1 makes a run step in lockstep with its driver, which the kill test uses).
BACKPRESSURE_ENV, BACKPRESSURE = "DPTUI_RAY_BACKPRESSURE", 64


@dataclass
class _Stage:
    key: str
    stage: SharedStage
    attempts: int = 0
    ref: Any = None
    error: str | None = None
    done: bool = False


@dataclass
class _RunState:
    plan: RunPlan
    needs: list[str]  # stage keys
    cache_rel: list[str]
    attempts: int = 0
    gen: Any = None
    node: str = ""
    result: dict | None = None
    finished: bool = False
    cancel_sent: bool = False
    history: list[str] = field(default_factory=list)  # nodes it ran on
    claim: Claim | None = None  # held in the driver's store while the run is submitted
    put_off: bool = False  # another process holds its claim


def _system_error(err: BaseException) -> bool:
    """A lost worker or node (retry elsewhere), as opposed to an error raised by the run's own code."""
    import ray.exceptions as rex

    if isinstance(err, (rex.RayTaskError, rex.TaskCancelledError)):
        return False
    return isinstance(err, rex.RayError)


def _cause(err: BaseException) -> BaseException:
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


class RayDriver:
    """Runs an experiment's plans on the cluster and keeps the driver's store up to date."""

    def __init__(self, exp: Experiment, runs_dir: Path, checked: Checked, data_root: str | None, sink: Sink | None,
                 should_stop, cancelled):
        import ray

        self.ray = ray
        cfg = exp.cfg
        self.cfg, self.runs_dir, self.plans, self.checked = cfg, runs_dir, exp.plans, checked
        self.data_root = data_root
        self.sink = sink or (lambda ev: None)
        self.should_stop = should_stop or (lambda: False)
        self.cancelled = cancelled or (lambda run_id: False)
        self.shared = str(runs_dir) if cfg.run.ray_shared_store else None
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.board = ray.remote(num_cpus=0)(CancelBoard).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        res = {"num_cpus": cfg.run.cpus_per_run, "num_gpus": cfg.run.gpus_per_run}
        self.stage_fn = ray.remote(max_retries=0, **res)(stage_task)
        unread = int(os.environ.get(BACKPRESSURE_ENV, BACKPRESSURE))
        self.run_fn = ray.remote(max_retries=0, _generator_backpressure_num_objects=unread, **res)(run_task)
        self.stages: dict[str, _Stage] = {}
        self.runs: dict[str, _RunState] = {}
        self.mtt_queue: list[str] = []
        self.stopping = False

    # -- planning ------------------------------------------------------------------------------
    def plan_stages(self) -> None:
        for plan in self.plans:
            old = finished_results(self.cfg, plan, self.checked.dataset, self.runs_dir)
            if old is not None:
                self.runs[plan.run_id] = _RunState(plan, [], [], result=old, finished=True)
                continue
            stages = shared_stages(self.cfg, plan, self.checked.dataset, self.runs_dir)
            needs = [self._stage(st) for st in stages if not st.ready]
            self.runs[plan.run_id] = _RunState(plan, needs, [st.rel for st in stages])

    def _stage(self, stage: SharedStage) -> str:
        if stage.key not in self.stages:
            self.stages[stage.key] = _Stage(stage.key, stage)
            if stage.method == "mtt":  # MTT stages run one after another (they share expert trajectories)
                self.mtt_queue.append(stage.key)
        return stage.key

    # -- submitting ----------------------------------------------------------------------------
    def submit_stage(self, st: _Stage) -> None:
        seed = {}
        if st.stage.kind == "synthetic":  # reusable intermediates already made (MTT's expert trajectories)
            experts = synthetic_cache_dir(self.runs_dir) / "experts"
            if experts.is_dir():
                seed = read_tree(self.runs_dir, [experts.relative_to(self.runs_dir).as_posix()])
        st.attempts += 1
        st.ref = self.stage_fn.remote(self.cfg, st.stage, self.data_root, seed)

    def submit_run(self, rs: _RunState) -> None:
        rid = rs.plan.run_id
        seed = {}
        if not self.shared:
            seed = {k: v for k, v in read_tree(self.runs_dir, [rid, *rs.cache_rel]).items()
                    if Path(k).name not in NOT_SENT}
        rs.attempts += 1
        rs.gen = self.run_fn.remote(self.cfg, rs.plan, self.data_root, seed, self.board, self.shared)

    # -- results -------------------------------------------------------------------------------
    def emit(self, rid: str, data: dict) -> None:
        ev = event_from_dict(data)
        if not self.shared:
            d = RunDir(self.runs_dir, rid)
            d.path.mkdir(parents=True, exist_ok=True)
            d.append_event(ev)
        self.sink(ev)

    def fail(self, rs: _RunState, message: str) -> None:
        """Record a run that could not run (its stage failed, its code raised outside the engine, or it kept
        losing its node) in the driver's store, as the engine records a failed run."""
        rs.result = record_failure(self.cfg, rs.plan, self.checked.dataset.name, self.runs_dir, message, self.sink)
        self.finish(rs)

    def finish(self, rs: _RunState) -> None:
        rs.finished, rs.gen = True, None
        if rs.claim is not None:
            rs.claim.release()

    def on_stage_done(self, st: _Stage) -> None:
        try:
            files = self.ray.get(st.ref)
        except Exception as err:  # noqa: BLE001 - a stage's failure fails the runs that need it, not the others
            st.ref = None
            if self.stopping:  # cancelled by the stop: its runs just do not start
                st.error = "stopped"
                return
            if _system_error(err) and st.attempts <= self.cfg.run.ray_retries and not self.stopping:
                self.submit_stage(st)
                return
            what = "dense baseline" if st.stage.kind == "dense" else "synthetic source"
            st.error = f"{what} stage: {error_line(_cause(err))}"
            for rs in self.runs.values():
                if st.key in rs.needs and not rs.finished:
                    self.fail(rs, st.error)
            return
        write_tree(self.runs_dir, files)
        st.ref, st.done = None, True

    def on_message(self, rs: _RunState, msg: tuple) -> None:
        kind, body = msg
        rid = rs.plan.run_id
        if kind == "placed":
            rs.node = body
            rs.history.append(body)
        elif kind == "event":
            self.emit(rid, body)
        elif kind == "files":
            write_tree(self.runs_dir, body)
        elif kind == "result":
            rs.result = body

    def on_run_ready(self, rs: _RunState) -> None:
        try:
            ref = next(rs.gen)
        except StopIteration:
            self.finish(rs)
            if rs.result is None:
                self.fail(rs, "the run's task ended without results")
            return
        except Exception as err:  # noqa: BLE001 - handled below, like an error read from the stream
            ref, early = None, err
        try:
            if ref is None:
                raise early
            self.on_message(rs, self.ray.get(ref))
        except Exception as err:  # noqa: BLE001 - one run's failure is recorded; the others go on
            if _system_error(err) and rs.attempts <= self.cfg.run.ray_retries and not self.stopping:
                self.submit_run(rs)  # resumes after the last round that reached this store
                return
            if _system_error(err):
                self.fail(rs, f"lost its worker {rs.attempts} time(s), on {', '.join(rs.history) or 'unknown nodes'} "
                              f"({type(err).__name__}); raise run.ray_retries to try again")
            else:
                self.fail(rs, error_line(_cause(err)))

    # -- the loop ------------------------------------------------------------------------------
    def check_cancels(self) -> None:
        stop_all = self.should_stop()
        if stop_all and not self.stopping:
            self.stopping = True
            for st in self.stages.values():
                if st.ref is not None:
                    self.ray.cancel(st.ref)
        for rid, rs in self.runs.items():
            if rs.finished or rs.cancel_sent or not (stop_all or self.cancelled(rid)):
                continue
            rs.cancel_sent = True
            if rs.gen is None:  # not started: it never will
                self.finish(rs)
            else:
                self.board.cancel.remote(rid)

    def start_ready(self) -> None:
        if self.mtt_queue and not any(self.stages[k].ref is not None for k in self.mtt_queue):
            key = next((k for k in self.mtt_queue if not self.stages[k].done and self.stages[k].error is None), None)
            if key is not None:
                self.submit_stage(self.stages[key])
                self.mtt_queue.remove(key)
        for st in self.stages.values():
            if st.ref is None and not st.done and st.error is None and st.key not in self.mtt_queue \
                    and st.attempts == 0 and not self.stopping:
                self.submit_stage(st)
        for rs in self.runs.values():
            if rs.finished or rs.gen is not None or rs.attempts or self.stopping or rs.cancel_sent:
                continue
            if all(self.stages[k].done for k in rs.needs) and self.claim(rs):
                self.submit_run(rs)

    def claim(self, rs: _RunState) -> bool:
        """Take the run's claim in the driver's store; a run another process holds waits (said once)."""
        rs.claim = rs.claim or Claim(claim_path(self.runs_dir, "run", rs.plan.run_id))
        if rs.claim.try_acquire():
            return True
        if not rs.put_off:
            rs.put_off = True
            say_waiting(self.sink, rs.plan, rs.claim)
        return False

    def waiting_on(self) -> list:
        return [st.ref for st in self.stages.values() if st.ref is not None] + \
               [rs.gen for rs in self.runs.values() if rs.gen is not None]

    def put_off(self) -> bool:
        """Runs held by another process that this driver still waits for."""
        return any(not rs.finished and rs.gen is None and rs.put_off and not self.stopping and not rs.cancel_sent
                   for rs in self.runs.values())

    def drive(self) -> list[dict]:
        self.plan_stages()
        while True:
            self.check_cancels()
            self.start_ready()
            pending = self.waiting_on()
            if not pending:
                if not self.put_off():
                    break
                time.sleep(POLL_S)  # a run another process holds: look at its claim again
                continue
            ready, _ = self.ray.wait(pending, num_returns=1, timeout=POLL_S)
            if ready:  # and whatever else is ready now
                ready, _ = self.ray.wait(pending, num_returns=len(pending), timeout=0)
            by_stage = {st.ref: st for st in self.stages.values() if st.ref is not None}
            by_run = {rs.gen: rs for rs in self.runs.values() if rs.gen is not None}
            for r in ready:
                if r in by_stage:
                    self.on_stage_done(by_stage[r])
                elif r in by_run:
                    self.on_run_ready(by_run[r])
        out = []
        for plan in self.plans:
            rs = self.runs[plan.run_id]
            results = RunDir(self.runs_dir, plan.run_id).read_results() or rs.result
            if results is not None:
                out.append(results)
        return out


def run_on_ray(exp: Experiment, checked: Checked, *, sink: Sink | None = None,
               should_stop: Callable[[], bool] | None = None,
               cancelled: Callable[[str], bool] | None = None) -> list[dict]:
    """Run (or resume) the experiment's runs on the Ray cluster of ``run.ray_address``; returns their results.

    The device of every run is ``cuda`` when ``run.gpus_per_run`` > 0, else ``cpu`` (part of the runs' ids, as
    locally); the experiment was checked on the CPU before anything is submitted."""
    address = ray_address(exp.cfg)
    connect(address)
    check_resources(exp.cfg, cluster_status(address))
    root = str(Path(exp.data_root).absolute()) if exp.data_root else None
    return RayDriver(exp, Path(exp.runs_dir).absolute(), checked, root, sink, should_stop, cancelled).drive()
