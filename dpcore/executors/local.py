"""The local executor: an experiment's runs on this machine, ``Capacity.jobs`` at once.

One at a time, runs execute in this process. Several at once, each run executes in its own process (a pool of
``jobs`` spawned workers, each with its share of the CPU threads, or its GPU on a machine with several); the
shared stages go first (a dense baseline per seed, a synthetic set per source, each made once), then the runs
that need them, as the Ray executor does. Events come back through a queue and reach the sink here, in this
process; each run also writes its own events file, as it does alone.

Every run is claimed in the store before it starts (:mod:`dpcore.claims`), by the process that runs it (this one,
or its worker, so a driver killed mid-run releases nothing a worker of its still writes; its workers then exit). A run another
process holds is put off: the others run first, then this process waits for it and reads what it finished (or
resumes it, if the other process died), saying once which process has it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dpcore.claims import Claim, claim_path, holder
from dpcore.config import Config, to_dict
from dpcore.engine import (RunPlan, SharedStage, SyntheticSources, error_line, execute_run, finished_results,
                           make_stage, shared_stages)
from dpcore.events import RunFailed, Sink, Waiting
from dpcore.parallel import Capacity, set_threads
from dpcore.store import RunDir, config_hash
from dpcore.validate import Checked, check_experiment

if TYPE_CHECKING:
    from dpcore.experiment import Experiment

POLL_S = 0.2  # how often the driver looks at its stop flag and a put-off run's claim


def run_local(exp: Experiment, checked: Checked, cap: Capacity, *, sink: Sink | None,
              should_stop: Callable[[], bool]) -> list[dict]:
    if cap.jobs <= 1:
        exp.use_threads()
        return _Serial(exp, checked, sink, should_stop).run()
    return _Pool(exp, checked, cap, sink, should_stop).run()


def record_failure(cfg: Config, plan: RunPlan, dataset_name: str, runs_dir: Path, message: str,
                   sink: Sink | None) -> dict:
    """Record a run that could not run (its stage failed, its worker died) as the engine records a failed run."""
    d = RunDir(runs_dir, plan.run_id)
    d.path.mkdir(parents=True, exist_ok=True)
    results = d.read_results() or {"schema": 1, "run_id": plan.run_id, "experiment": cfg.experiment.name,
                                   "method": plan.method, "seed": plan.seed, "rounds": [],
                                   **({"variant": plan.variant} if plan.variant else {}),
                                   "dataset": dataset_name, "model": cfg.model.name,
                                   "rounds_planned": cfg.prune.rounds}
    results.update(status="failed", error=message, updated_at=time.time())
    d.write_results(results)
    ev = RunFailed(run_id=plan.run_id, error=message)
    d.append_event(ev)
    if sink is not None:
        sink(ev)
    return results


def say_waiting(sink: Sink | None, plan: RunPlan, claim: Claim) -> None:
    """Tell ``sink`` once that ``plan``'s run is held by another process (which one, since when)."""
    if sink is not None:
        who = holder(claim.path)
        sink(Waiting(run_id=plan.run_id, what="this run", holder=who.line() if who else ""))


class _Serial:
    """One run after another, in this process."""

    def __init__(self, exp: Experiment, checked: Checked, sink: Sink | None, should_stop: Callable[[], bool]):
        self.exp, self.checked, self.sink, self.should_stop = exp, checked, sink, should_stop
        self.sources = SyntheticSources(exp.cfg, exp.runs_dir, exp.data_root, checked.dataset, checked.files)

    def execute(self, plan: RunPlan) -> dict:
        return execute_run(self.exp.cfg, plan, self.checked, self.exp.runs_dir, data_root=self.exp.data_root,
                           sources=self.sources, sink=self.sink, should_stop=self.should_stop)

    def run(self) -> list[dict]:
        results: dict[str, dict] = {}
        put_off: list[tuple[RunPlan, Claim]] = []
        for plan in self.exp.plans:
            if self.should_stop():
                break
            claim = Claim(claim_path(self.exp.runs_dir, "run", plan.run_id))
            if not claim.try_acquire():
                say_waiting(self.sink, plan, claim)
                put_off.append((plan, claim))
                continue
            try:
                results[plan.run_id] = self.execute(plan)
            finally:
                claim.release()
        for plan, claim in put_off:  # held by another process: wait for it, then read (or resume) the run
            while not self.should_stop() and not claim.try_acquire():
                time.sleep(POLL_S)
            if not claim.held:
                break
            try:
                results[plan.run_id] = self.execute(plan)
            finally:
                claim.release()
        return [results[p.run_id] for p in self.exp.plans if p.run_id in results]


# -------------------------------------------------------------------------------- worker processes
_WORKER: dict = {}  # per worker process: the event queue, the stop flag, the checked experiment


def _exit_with_driver(driver: int) -> None:
    """A worker whose driver died (kill -9) exits too, releasing its claim, rather than live on unobserved: another
    driver then resumes the run after its last finished round."""
    while os.getppid() == driver:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(events, stop, threads: int, gpus: int, counter) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which sets ``stop``
    threading.Thread(target=_exit_with_driver, args=(os.getppid(),), daemon=True).start()
    set_threads(threads)
    if gpus:
        import torch

        with counter.get_lock():
            index, counter.value = counter.value % gpus, counter.value + 1
        torch.cuda.set_device(index)
    _WORKER.update(events=events, stop=stop)


def _checked(cfg: Config, runs_dir: Path, data_root) -> Checked:
    key = (config_hash(to_dict(cfg)), str(runs_dir), str(data_root))
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, checked=check_experiment(cfg, runs_dir, data_root))
    return _WORKER["checked"]


def _stage_task(cfg: Config, stage: SharedStage, runs_dir: Path, data_root) -> None:
    checked = _checked(cfg, runs_dir, data_root)
    make_stage(cfg, stage, checked, runs_dir, data_root, sink=_WORKER["events"].put,
               should_stop=_WORKER["stop"].is_set)


def _run_task(cfg: Config, plan: RunPlan, runs_dir: Path, data_root) -> dict:
    """One run in a worker, under its claim, which this process holds while it runs: a driver killed meanwhile
    releases nothing that another driver could take while this worker still writes the run."""
    checked = _checked(cfg, runs_dir, data_root)
    claim = Claim(claim_path(runs_dir, "run", plan.run_id))
    if not claim.try_acquire():  # taken since the driver looked: wait for it, then read (or resume) the run
        say_waiting(_WORKER["events"].put, plan, claim)
        claim.acquire()
    try:
        return execute_run(cfg, plan, checked, runs_dir, data_root=data_root, sink=_WORKER["events"].put,
                           should_stop=_WORKER["stop"].is_set)
    finally:
        claim.release()


class _Pool:
    """``cap.jobs`` worker processes: the shared stages first, then each run as soon as its stages are made."""

    def __init__(self, exp: Experiment, checked: Checked, cap: Capacity, sink: Sink | None,
                 should_stop: Callable[[], bool]):
        self.exp, self.checked, self.cap = exp, checked, cap
        self.sink = sink or (lambda ev: None)
        self.should_stop = should_stop
        self.ctx = mp.get_context("spawn")  # not fork: torch's thread pools do not survive a fork
        self.events = self.ctx.Queue()
        self.stop = self.ctx.Event()
        self.results: dict[str, dict] = {}
        self.needs: dict[str, list[str]] = {}  # run id -> keys of the stages it waits for
        self.stages: dict[str, SharedStage] = {}
        self.made: set[str] = set()
        self.failed: dict[str, str] = {}  # stage key -> why
        self.put_off: set[str] = set()

    def plan(self) -> list[RunPlan]:
        """The runs left to do, and the stages they need that are not in the store yet."""
        todo = []
        cfg, ds, root = self.exp.cfg, self.checked.dataset, self.exp.runs_dir
        for plan in self.exp.plans:
            done = finished_results(cfg, plan, ds, root)
            if done is not None:
                self.results[plan.run_id] = done
                continue
            todo.append(plan)
            stages = [s for s in shared_stages(cfg, plan, ds, root) if not s.ready]
            self.needs[plan.run_id] = [s.key for s in stages]
            for s in stages:
                self.stages.setdefault(s.key, s)
        return todo

    def run(self) -> list[dict]:
        todo = self.plan()
        if todo:
            gpus = len(self.cap.devices) if self.exp.device.type == "cuda" else 0
            with ProcessPoolExecutor(self.cap.jobs, mp_context=self.ctx, initializer=_init_worker,
                                     initargs=(self.events, self.stop, self.cap.threads, gpus,
                                               self.ctx.Value("i", 0))) as pool:
                try:
                    self.drive(pool, todo)
                finally:
                    self.stop.set()
            self.drain()
            self.events.close()
            self.events.join_thread()
        return [self.results[p.run_id] for p in self.exp.plans if p.run_id in self.results]

    def drive(self, pool: ProcessPoolExecutor, todo: list[RunPlan]) -> None:
        cfg, root, data_root = self.exp.cfg, self.exp.runs_dir, self.exp.data_root
        running: dict[Future, tuple[str, object]] = {}
        mtt_busy = False
        waiting = list(todo)
        while waiting or running:
            if self.should_stop() and not self.stop.is_set():
                self.stop.set()
            if self.stop.is_set():
                waiting = []  # nothing new starts; the running ones stop after their current step
            busy = {key for kind, key in running.values() if kind == "stage"}
            for key, st in self.stages.items():
                if key in self.made or key in self.failed or key in busy or self.stop.is_set():
                    continue
                if st.method == "mtt":  # MTT sources share expert trajectories: one after another
                    if mtt_busy:
                        continue
                    mtt_busy = True
                running[pool.submit(_stage_task, cfg, st, root, data_root)] = ("stage", key)
            for plan in list(waiting):
                needs = self.needs[plan.run_id]
                bad = next((self.failed[k] for k in needs if k in self.failed), None)
                if bad is not None:
                    waiting.remove(plan)
                    self.results[plan.run_id] = record_failure(cfg, plan, self.checked.dataset.name, root, bad,
                                                               self.sink)
                    continue
                if not all(k in self.made for k in needs):
                    continue
                claim = Claim(claim_path(root, "run", plan.run_id))  # held by another process? then later
                if not claim.try_acquire():
                    if plan.run_id not in self.put_off:
                        self.put_off.add(plan.run_id)
                        say_waiting(self.sink, plan, claim)
                    continue
                claim.release()  # the worker that runs it takes it (see _run_task)
                waiting.remove(plan)
                running[pool.submit(_run_task, cfg, plan, root, data_root)] = ("run", plan)
            done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
            self.drain()
            for fut in done:
                kind, what = running.pop(fut)
                if kind == "stage":
                    if self.stages[what].method == "mtt":
                        mtt_busy = False
                    self.stage_done(fut, what)
                else:
                    self.run_done(fut, what)

    def stage_done(self, fut: Future, key: str) -> None:
        err = fut.exception()
        if err is None:
            self.made.add(key)
            return
        st = self.stages[key]
        what = "dense baseline" if st.kind == "dense" else "synthetic source"
        self.failed[key] = "stopped" if self.stop.is_set() else f"{what} stage: {error_line(err)}"

    def run_done(self, fut: Future, plan: RunPlan) -> None:
        err = fut.exception()
        if err is None:
            self.results[plan.run_id] = fut.result()
        else:
            why = "its worker process died" if isinstance(err, BrokenProcessPool) else error_line(err)
            self.results[plan.run_id] = record_failure(self.exp.cfg, plan, self.checked.dataset.name,
                                                       self.exp.runs_dir, why, self.sink)

    def drain(self) -> None:
        """Hand the workers' events to the sink, here in the driver."""
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            self.sink(ev)
