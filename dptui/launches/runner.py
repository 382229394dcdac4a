"""The detached queue runner: ``python -m dptui.launches.runner <launch dir>``.

The app starts one runner per launch, in its own session (``start_new_session``), so closing the app or
losing the SSH connection stops neither the runner nor its runs. The runner reads ``launch.json`` and runs
each run as its own child process (``dptui --headless --run-id ID``, again in its own session, output to
``<run id>.log``).

Places: each device slot (``cpu``, ``gpu0``, ...) has ``jobs`` places (``launch.json``'s ``capacity``, computed
by the launcher from ``run.jobs``; 1 when absent), place ``i`` being the lock file
``<runs>/launches/slot-<slot>.lock`` (i = 0) or ``slot-<slot>.<i>.lock``. A worker thread takes a free place
with ``flock`` before claiming the next run and holds it while the run runs, so the runs of all launches
together never exceed a slot's places (with launches of different capacities: the largest of them), and a
crashed runner releases its places automatically. A run on the CPU gets ``DPTUI_THREADS_PER_RUN`` (its
share of the cores), a run on a GPU ``CUDA_VISIBLE_DEVICES``.

``state.json`` (written only here) records each run's state (queued, running, exited, cancelled), pid, exit
code, slot (``cpu``) and place (``cpu#1``), and under ``waiting`` the slots whose places are all taken (by
this launch's or another's runs) while a run of this launch waits for one. The app asks for a cancel by
creating ``cancel/<run id>``: a queued run is skipped, a running one gets SIGINT (it stops after the current
step and can be resumed), then SIGTERM after a grace period, then SIGKILL.

Plain Python (no torch, no Textual) so that it starts fast and stays small.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dpcore.parallel import THREADS_ENV

POLL_S = 0.5
GRACE_S = 20.0  # after SIGINT, before SIGTERM
KILL_S = 10.0  # after SIGTERM, before SIGKILL


def write_json_atomic(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def place_lock_path(runs_dir: Path, slot: str, index: int = 0) -> Path:
    """The lock file of place ``index`` of ``slot`` (place 0 keeps the name of the one-run-a-slot queue)."""
    return Path(runs_dir) / "launches" / (f"slot-{slot}.lock" if index == 0 else f"slot-{slot}.{index}.lock")


def place_name(slot: str, index: int) -> str:
    return f"{slot}#{index}"


class QueueRunner:
    def __init__(self, launch_dir: Path):
        self.dir = Path(launch_dir)
        self.spec = json.loads((self.dir / "launch.json").read_text())
        self.lock = threading.Lock()
        self.pending = list(self.spec["runs"])
        self.waiting: dict[str, int] = {}  # slot -> workers waiting for a free place
        self.state = {"runner_pid": os.getpid(), "started_at": time.time(),
                      "runs": {r["run_id"]: {"state": "queued"} for r in self.pending}}
        self.save()

    def log(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.dir / "state.json", self.state)

    def update(self, run_id: str, **fields) -> None:
        with self.lock:
            self.state["runs"][run_id].update(fields)
        self.save()

    def cancelled(self, run_id: str) -> bool:
        return (self.dir / "cancel" / run_id).exists()

    def capacity(self, slot: str) -> tuple[int, int | None]:
        """(places, CPU threads of each run or None) of ``slot``; one place for a launch.json without them."""
        cap = self.spec.get("capacity", {}).get(slot) or {}
        return max(1, int(cap.get("jobs", 1))), cap.get("threads")

    def claim(self) -> dict | None:
        """The next run to start (skipping cancelled ones), or None when the queue is empty."""
        while True:
            with self.lock:
                if not self.pending:
                    return None
                run = self.pending.pop(0)
            if self.cancelled(run["run_id"]):
                self.skip(run)
                continue
            return run

    def skip(self, run: dict) -> None:
        self.update(run["run_id"], state="cancelled", ended_at=time.time())
        self.log(f"{run['run_id']} cancelled before it started")

    def drop_cancelled(self) -> None:
        """Mark the queued runs with a cancel request cancelled now (not when a place frees)."""
        keep, gone = [], []
        with self.lock:
            for run in self.pending:
                (gone if self.cancelled(run["run_id"]) else keep).append(run)
            self.pending = keep
        for run in gone:
            self.skip(run)

    def take_place(self, slot: str, places: int):
        """(index, open lock file) of a free place of ``slot``, waiting for one; None once the queue is empty.
        While it waits, ``state.json``'s ``waiting`` lists the slot."""
        paths = [place_lock_path(Path(self.spec["runs_dir"]), slot, i) for i in range(places)]
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        waited = False
        try:
            while True:
                for index, path in enumerate(paths):
                    fh = open(path, "a")
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:  # another run (of this launch or another) holds it
                        fh.close()
                        continue
                    return index, fh
                self.drop_cancelled()
                with self.lock:
                    if not self.pending:
                        return None
                if not waited:
                    waited = True
                    self.set_waiting(slot, +1)
                time.sleep(POLL_S)
        finally:
            if waited:
                self.set_waiting(slot, -1)

    def set_waiting(self, slot: str, change: int) -> None:
        with self.lock:
            self.waiting[slot] = self.waiting.get(slot, 0) + change
            self.state["waiting"] = sorted(s for s, n in self.waiting.items() if n > 0)
        self.save()

    def slot_loop(self, slot: str) -> None:
        places, _ = self.capacity(slot)
        while True:
            held = self.take_place(slot, places)
            if held is None:
                return
            index, fh = held
            with fh:  # closing it releases the place
                run = self.claim()
                if run is None:
                    return
                self.run_one(run, slot, index)

    def run_one(self, run: dict, slot: str, index: int = 0) -> None:
        run_id, place = run["run_id"], place_name(slot, index)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DPTUI_SLOT": slot}
        if slot.startswith("gpu"):
            env["CUDA_VISIBLE_DEVICES"] = slot[3:]
        threads = self.capacity(slot)[1]
        if slot == "cpu" and threads:
            env[THREADS_ENV] = str(threads)
        with open(self.dir / run["log"], "ab") as log:
            try:
                proc = subprocess.Popen(run["argv"], start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.spec.get("cwd") or None)
            except OSError as err:
                log.write(f"error: cannot start the run: {err}\n".encode())
                self.update(run_id, state="exited", rc=127, slot=slot, place=place, ended_at=time.time())
                return
        self.update(run_id, state="running", pid=proc.pid, slot=slot, place=place, started_at=time.time())
        self.log(f"{run_id} started on {place} (pid {proc.pid})")
        sent: dict[int, float] = {}
        while True:
            try:
                rc = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.cancelled(run_id):
                now = time.monotonic()
                for sig, after, wait in ((signal.SIGINT, None, 0.0), (signal.SIGTERM, signal.SIGINT, GRACE_S),
                                         (signal.SIGKILL, signal.SIGTERM, KILL_S)):
                    if sig not in sent and (after is None or (after in sent and now - sent[after] >= wait)):
                        sent[sig] = now
                        self.log(f"{run_id}: sending {sig.name}")
                        try:
                            os.killpg(proc.pid, sig)
                        except ProcessLookupError:
                            pass
                        break
        self.update(run_id, state="exited", rc=rc, ended_at=time.time())
        self.log(f"{run_id} exited with code {rc}")

    def run_driver(self) -> None:
        """A Ray launch: one driver process (``dptui --headless`` with every run id) spreads the runs over the
        cluster; cancel requests reach it through ``DPTUI_CANCEL_DIR``; each run's end state comes from its
        results.json once the driver exits."""
        ids = [r["run_id"] for r in self.spec["runs"]]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DPTUI_CANCEL_DIR": str(self.dir / "cancel")}
        (self.dir / "cancel").mkdir(exist_ok=True)
        with open(self.dir / "driver.log", "ab") as log:
            try:
                proc = subprocess.Popen(self.spec["driver_argv"], start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.spec.get("cwd") or None)
            except OSError as err:
                log.write(f"error: cannot start the Ray driver: {err}\n".encode())
                for rid in ids:
                    self.update(rid, state="exited", rc=127, slot="ray", ended_at=time.time())
                return
        now = time.time()
        with self.lock:
            for rid in ids:
                self.state["runs"][rid].update(state="running", pid=proc.pid, slot="ray", started_at=now)
        self.save()
        self.log(f"ray driver started (pid {proc.pid}) for {len(ids)} run(s)")
        rc = proc.wait()
        runs_dir = Path(self.spec["runs_dir"])
        with self.lock:
            for rid in ids:
                status = self._status(runs_dir / rid / "results.json")
                code = {"done": 0, "stopped": 130, "failed": 1}.get(status, rc if rc else 1)
                self.state["runs"][rid].update(state="cancelled" if status is None and self.cancelled(rid) else "exited",
                                               rc=code, ended_at=time.time())
        self.save()
        self.log(f"ray driver exited with code {rc}")

    @staticmethod
    def _status(path: Path) -> str | None:
        try:
            return json.loads(path.read_text()).get("status")
        except (OSError, ValueError):
            return None

    def run(self) -> None:
        if self.spec.get("executor") == "ray":
            self.run_driver()
            with self.lock:
                self.state["finished_at"] = time.time()
            self.save()
            self.log("queue finished")
            return
        threads = [threading.Thread(target=self.slot_loop, args=(slot,), name=f"slot-{slot}-{i}")
                   for slot in self.spec["slots"] for i in range(min(self.capacity(slot)[0], len(self.pending)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.lock:
            self.state["finished_at"] = time.time()
        self.save()
        self.log("queue finished")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dptui.launches.runner LAUNCH_DIR", file=sys.stderr)
        return 2
    QueueRunner(Path(args[0])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
