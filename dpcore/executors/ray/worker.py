"""The worker side of the Ray executor: one task per run (a generator streaming its events and files back to
the driver), one task per shared stage, and the cancel board they poll."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from dpcore.config import Config, to_dict
from dpcore.engine import RunPlan, SharedStage, execute_run, make_stage
from dpcore.events import AnalysisDone, DenseDone, RoundDone, RunDone, RunFailed
from dpcore.parallel import set_threads
from dpcore.store import config_hash
from dpcore.validate import Checked, check_experiment, resolve_device

from ..files import changed, stamp, write_tree

SYNCED_BEFORE = (DenseDone, RoundDone, AnalysisDone, RunDone, RunFailed)  # their files reach the driver first
NOT_SENT = frozenset({"events.jsonl"})  # the driver writes it from the streamed events
CANCEL_POLL_S = 1.0


_CHECKED: dict[tuple, Checked] = {}  # per worker process: the experiment's data, loaded once


def _load(cfg: Config, store: Path, data_root: str | None) -> Checked:
    device = resolve_device(cfg.run.device)
    key = (config_hash(to_dict(cfg)), data_root, str(device))
    if key not in _CHECKED:
        _CHECKED.clear()
        _CHECKED[key] = check_experiment(cfg, store, data_root, device=device)
    return _CHECKED[key]


def _prepare_worker(cfg: Config) -> None:
    """``run.threads`` torch threads, else as many as the CPUs the task holds."""
    set_threads(cfg.run.threads or max(1, int(round(cfg.run.cpus_per_run))))


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


def stage_task(cfg: Config, stage: SharedStage, data_root: str | None, seed_files: dict[str, bytes]) -> dict:
    """Make one shared stage (the seed's dense baseline, or the plan's synthetic set) in a private store;
    returns the cache files it wrote (relative to the store)."""
    _prepare_worker(cfg)
    store = Path(tempfile.mkdtemp(prefix="dptui-ray-stage-"))
    try:
        write_tree(store, seed_files)
        before = stamp(store, ["cache"])
        make_stage(cfg, stage, _load(cfg, store, data_root), store, data_root)
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
        events: queue.Queue = queue.Queue()
        out: dict[str, Any] = {}

        def work() -> None:
            try:
                out["results"] = execute_run(cfg, plan, checked, store, data_root=data_root, sink=events.put,
                                             should_stop=watch.is_set, node=node)
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
