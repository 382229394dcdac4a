"""The Ray executor: one Ray task per run, on any node of a cluster, running the same engine as a local run.

The driver (the machine that launched the experiment) owns the run store. Nothing assumes a shared filesystem:

* **Shared stages first, once per cache key.** A dense baseline (per seed) and a distilled set (per source)
  that the driver's cache lacks is made by one stage task; its cache files come back and are written into
  the driver's cache; runs that need it start only then, with those files. MTT sources run their stages one
  after another, so a later one reuses the expert trajectories of an earlier one.
* **Each run** gets its own store files (the finished rounds: a resumed run goes on after its last one) and
  the cache files it needs, runs in a private folder on its node, and streams back, as a Ray generator:
  where it runs, every engine event (appended to ``events.jsonl`` here, and shown live), and every file it
  writes (round files, masks, ``results.json``, sink logs), each written here atomically.
* **Faults**: a task lost with its node or worker process is submitted again (``run.ray_retries`` times) and
  resumes from what reached the driver's store; with ``run.threads`` set its results equal an uninterrupted
  run's. A run that raises fails alone. A driver restarted after a crash resumes its unfinished runs.
* **Cancel**: a small actor on the driver's node holds the cancelled run ids; each run polls it and stops
  after the current step, as a local run does on Ctrl-C.

With ``run.ray_shared_store`` (the store is on a filesystem every node mounts at the same path), workers
write straight into it and only events travel.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from dpcore.config import Config, to_dict
from dpcore.engine import Run, RunPlan, SyntheticSources, apply_threads, error_line, plan_runs
from dpcore.errors import ConfigError
from dpcore.events import AnalysisDone, DenseDone, RoundDone, RunDone, RunFailed, Sink, event_from_dict
from dpcore.store import RunDir, config_hash
from dpcore.synthetic.provider import cache_entry, synthetic_cache_dir
from dpcore.validate import Checked, check_experiment, resolve_device

from .files import changed, read_tree, stamp, write_tree

SYNCED_BEFORE = (DenseDone, RoundDone, AnalysisDone, RunDone, RunFailed)  # their files reach the driver first
NOT_SENT = frozenset({"events.jsonl"})  # the driver writes it from the streamed events
POLL_S = 0.5
# A run's task waits once this many of its messages are unread by the driver (memory stays bounded when the
# driver is slow; 1 makes a run step in lockstep with its driver, which the kill test uses).
BACKPRESSURE_ENV, BACKPRESSURE = "DPTUI_RAY_BACKPRESSURE", 64
CANCEL_POLL_S = 1.0


# ------------------------------------------------------------------------------------------- cluster
def ray_address(cfg: Config) -> str | None:
    """``run.ray_address``, else ``$RAY_ADDRESS``, else None (a local Ray instance)."""
    return cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> None:
    """Connect this process to the cluster at ``address`` (None: start or join a local instance)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("run.executor = 'ray' needs the ray package; pip install 'dpcore[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "(a local instance)"
        raise ConfigError(f"cannot connect to the Ray cluster {where}: {str(err).splitlines()[0]}; start one with "
                          "`ray start --head`, or set run.ray_address / RAY_ADDRESS (--ray-address)") from None


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterStatus:
    address: str
    nodes: list[NodeInfo]
    free_cpus: float
    free_gpus: float

    @property
    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]

    def line(self) -> str:
        alive = self.alive
        return (f"{len(alive)} node{'s' if len(alive) != 1 else ''}, {sum(n.cpus for n in alive):g} CPUs "
                f"({self.free_cpus:g} free), {sum(n.gpus for n in alive):g} GPUs ({self.free_gpus:g} free)")


def cluster_status(address: str | None = None) -> ClusterStatus:
    """The cluster's nodes and free CPUs/GPUs (connecting first)."""
    import ray

    connect(address)
    nodes = [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", ""), bool(n.get("Alive")),
                      float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
             for n in ray.nodes()]
    free = ray.available_resources()
    return ClusterStatus(address or "local", nodes, float(free.get("CPU", 0)), float(free.get("GPU", 0)))


def check_resources(cfg: Config, status: ClusterStatus) -> None:
    """Refuse, before any work, a per-run request no node of the cluster can ever satisfy."""
    alive = status.alive
    if cfg.run.gpus_per_run > 0 and not any(n.gpus >= min(cfg.run.gpus_per_run, 1.0) for n in alive):
        raise ConfigError(f"run.gpus_per_run = {cfg.run.gpus_per_run:g}, but no node of the Ray cluster has a GPU "
                          f"({status.line()}); set run.gpus_per_run = 0 to run on CPUs")
    if not any(n.cpus >= cfg.run.cpus_per_run for n in alive):
        raise ConfigError(f"run.cpus_per_run = {cfg.run.cpus_per_run:g}, but no node of the Ray cluster has that "
                          f"many CPUs ({status.line()}); lower run.cpus_per_run")


# -------------------------------------------------------------------------------------- worker side
_CHECKED: dict[tuple, Checked] = {}  # per worker process: the experiment's data, loaded once


def _load(cfg: Config, store: Path, data_root: str | None) -> Checked:
    device = resolve_device(cfg.run.device)
    key = (config_hash(to_dict(cfg)), data_root, str(device))
    if key not in _CHECKED:
        _CHECKED.clear()
        _CHECKED[key] = check_experiment(cfg, store, data_root, device=device)
    return _CHECKED[key]


def _prepare_worker(cfg: Config) -> None:
    apply_threads(cfg)
    if not cfg.run.threads:  # as many torch threads as CPUs the task holds
        torch.set_num_threads(max(1, int(round(cfg.run.cpus_per_run))))


def _placement() -> str:
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    gpus = ray.get_gpu_ids()
    where = f"{ray.util.get_node_ip_address()}/{node}"
    return where + (f" gpu {','.join(str(g) for g in gpus)}" if gpus else "")


class _CancelWatch:
    """Polls the driver's cancel board for one run (a thread); ``is_set`` is the engine's stop flag."""

    def __init__(self, board, run_id: str):
        self.flag, self.done = threading.Event(), threading.Event()
        self.board, self.run_id = board, run_id
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        import ray

        while not self.done.wait(CANCEL_POLL_S):
            try:
                if ray.get(self.board.is_cancelled.remote(self.run_id), timeout=10):
                    self.flag.set()
                    return
            except Exception:  # noqa: BLE001 - an unreachable board cancels nothing; the run goes on
                continue

    def is_set(self) -> bool:
        return self.flag.is_set()

    def close(self) -> None:
        self.done.set()


def stage_task(cfg: Config, plan: RunPlan, data_root: str | None, kind: str, seed_files: dict[str, bytes]) -> dict:
    """Make one shared stage (``dense``: the seed's dense baseline; ``synthetic``: the plan's synthetic set) in
    a private store; returns the cache files it wrote (relative to the store)."""
    _prepare_worker(cfg)
    store = Path(tempfile.mkdtemp(prefix="dptui-ray-stage-"))
    try:
        write_tree(store, seed_files)
        before = stamp(store, ["cache"])
        checked = _load(cfg, store, data_root)
        run = Run(cfg, plan, checked.dataset, store)
        run.dir.path.mkdir(parents=True)  # its events land there and are dropped with the folder
        if kind == "dense":
            run.results = run.new_results([])
            run.start_point()
        else:
            SyntheticSources(run.cfg, store, data_root, checked.dataset, checked.files).get(run.cfg.synthetic)
        return changed(store, ["cache"], before)[0]
    finally:
        shutil.rmtree(store, ignore_errors=True)


def run_task(cfg: Config, plan: RunPlan, data_root: str | None, seed_files: dict[str, bytes], board,
             shared_store: str | None):
    """One run on this node, as a generator of messages to the driver: ("placed", label), ("event", dict),
    ("files", {path: bytes}), and last ("result", results)."""
    node = _placement()
    yield ("placed", node)
    _prepare_worker(cfg)
    store = Path(shared_store) if shared_store else Path(tempfile.mkdtemp(prefix="dptui-ray-run-"))
    watch = _CancelWatch(board, plan.run_id)
    try:
        if not shared_store:
            write_tree(store, seed_files)
        under = [plan.run_id, "cache"]
        before = stamp(store, under)
        checked = _load(cfg, store, data_root)
        sources = SyntheticSources(cfg, store, data_root, checked.dataset, checked.files)
        events: queue.Queue = queue.Queue()
        run = Run(cfg, plan, checked.dataset, store, sources=sources, sink=events.put, should_stop=watch.is_set,
                  node=node)
        out: dict[str, Any] = {}

        def work() -> None:
            try:
                out["results"] = run.execute()
            except BaseException as err:  # noqa: BLE001 - re-raised below, in the task's own thread
                out["error"] = err
            finally:
                events.put(None)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while (ev := events.get()) is not None:
            if not shared_store and isinstance(ev, SYNCED_BEFORE):
                files, before = changed(store, under, before, NOT_SENT)
                if files:
                    yield ("files", files)
            yield ("event", ev.to_dict())
        worker.join()
        if not shared_store:
            files, before = changed(store, under, before, NOT_SENT)
            if files:
                yield ("files", files)
        if "error" in out:
            raise out["error"]
        yield ("result", out["results"])
    finally:
        watch.close()
        if not shared_store:
            shutil.rmtree(store, ignore_errors=True)


class CancelBoard:
    """The run ids cancelled from the driver (a Ray actor on the driver's node)."""

    def __init__(self):
        self.ids: set[str] = set()

    def cancel(self, run_id: str) -> None:
        self.ids.add(run_id)

    def is_cancelled(self, run_id: str) -> bool:
        return run_id in self.ids


# -------------------------------------------------------------------------------------- driver side
@dataclass
class _Stage:
    key: str
    kind: str
    plan: RunPlan
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

    def __init__(self, cfg: Config, runs_dir: Path, plans: list[RunPlan], checked: Checked,
                 data_root: str | None, sink: Sink | None, should_stop, cancelled):
        import ray

        self.ray = ray
        self.cfg, self.runs_dir, self.plans, self.checked = cfg, runs_dir, plans, checked
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
        cache = synthetic_cache_dir(self.runs_dir)
        for plan in self.plans:
            run = Run(self.cfg, plan, self.checked.dataset, self.runs_dir)
            old = run.dir.read_results()
            if old and old.get("status") == "done" and len(old.get("rounds", [])) == self.cfg.prune.rounds \
                    and not run.analysis_stage().pending(old, self.cfg.analysis):
                self.runs[plan.run_id] = _RunState(plan, [], [], result=old, finished=True)
                continue
            needs, rel = [], []
            dense = run.dense_cache_path().relative_to(self.runs_dir).as_posix()
            rel.append(dense)
            if not (self.runs_dir / dense).exists():
                needs.append(self._stage("dense:" + dense, "dense", plan))
            if plan.method == "distilled":
                entry = cache_entry(run.cfg.synthetic, self.checked.dataset, self.cfg.model)
                if entry is not None:
                    entry_rel = (cache / entry).relative_to(self.runs_dir).as_posix()
                    rel.append(entry_rel)
                    if not (cache / entry / "images_best.pt").exists():
                        needs.append(self._stage("synthetic:" + entry, "synthetic", plan, run.cfg.synthetic.method))
            self.runs[plan.run_id] = _RunState(plan, needs, rel)

    def _stage(self, key: str, kind: str, plan: RunPlan, method: str = "") -> str:
        if key not in self.stages:
            self.stages[key] = _Stage(key, kind, plan)
            if method == "mtt":  # MTT stages run one after another (they share expert trajectories)
                self.mtt_queue.append(key)
        return key

    # -- submitting ----------------------------------------------------------------------------
    def submit_stage(self, st: _Stage) -> None:
        seed = {}
        if st.kind == "synthetic":  # reusable intermediates already made (MTT's expert trajectories)
            experts = synthetic_cache_dir(self.runs_dir) / "experts"
            if experts.is_dir():
                seed = read_tree(self.runs_dir, [experts.relative_to(self.runs_dir).as_posix()])
        st.attempts += 1
        st.ref = self.stage_fn.remote(self.cfg, st.plan, self.data_root, st.kind, seed)

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
        rid = rs.plan.run_id
        d = RunDir(self.runs_dir, rid)
        d.path.mkdir(parents=True, exist_ok=True)
        results = d.read_results() or {"schema": 1, "run_id": rid, "experiment": self.cfg.experiment.name,
                                       "method": rs.plan.method, "seed": rs.plan.seed, "rounds": [],
                                       **({"variant": rs.plan.variant} if rs.plan.variant else {}),
                                       "dataset": self.checked.dataset.name, "model": self.cfg.model.name,
                                       "rounds_planned": self.cfg.prune.rounds}
        results.update(status="failed", error=message, updated_at=time.time())
        d.write_results(results)
        self.emit(rid, RunFailed(run_id=rid, error=message).to_dict())
        rs.result, rs.finished, rs.gen = results, True, None

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
            what = "dense baseline" if st.kind == "dense" else "synthetic source"
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
            rs.finished, rs.gen = True, None
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
                rs.finished = True
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
            if all(self.stages[k].done for k in rs.needs):
                self.submit_run(rs)

    def waiting_on(self) -> list:
        return [st.ref for st in self.stages.values() if st.ref is not None] + \
               [rs.gen for rs in self.runs.values() if rs.gen is not None]

    def drive(self) -> list[dict]:
        self.plan_stages()
        while True:
            self.check_cancels()
            self.start_ready()
            pending = self.waiting_on()
            if not pending:
                break
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


def run_on_ray(cfg: Config, runs_dir: Path, *, data_root: str | Path | None = None, sink: Sink | None = None,
               should_stop: Callable[[], bool] | None = None, only: list[str] | None = None,
               checked: Checked | None = None, cancelled: Callable[[str], bool] | None = None) -> list[dict]:
    """Run (or resume) ``cfg``'s runs on the Ray cluster of ``run.ray_address``; returns their results dicts.

    The device of every run is ``cuda`` when ``run.gpus_per_run`` > 0, else ``cpu`` (part of the runs' ids, as
    locally). The experiment is checked here on the CPU before anything is submitted."""
    cfg = on_cluster(cfg)
    plans = [p for p in plan_runs(cfg, torch.device(cfg.run.device)) if only is None or p.run_id in only]
    runs_dir = Path(runs_dir).absolute()
    checked = checked or check_experiment(cfg, runs_dir, data_root, device=torch.device("cpu"))
    connect(ray_address(cfg))
    check_resources(cfg, cluster_status(ray_address(cfg)))
    root = str(Path(data_root).absolute()) if data_root else None
    return RayDriver(cfg, runs_dir, plans, checked, root, sink, should_stop, cancelled).drive()


def on_cluster(cfg: Config) -> Config:
    """``cfg`` with the device its runs get on the cluster."""
    return replace(cfg, run=replace(cfg.run, device="cuda" if cfg.run.gpus_per_run > 0 else "cpu"))


__all__ = ["ClusterStatus", "cluster_status", "connect", "on_cluster", "run_on_ray"]
