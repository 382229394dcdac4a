"""Starting, cancelling and resuming runs as detached OS processes; reading their launch records.

A launch is a folder ``<runs>/launches/<experiment>-<YYYYmmdd-HHMMSS>/`` holding

- ``profile.toml``: the resolved config (the profile plus the form's overrides and the chosen device),
- ``launch.json``: its runs (id, method, seed, the exact command line), device slots and their capacity,
- ``runner.pid`` / ``state.json`` / ``runner.log``: the detached queue runner (:mod:`dptui.launches.runner`),
- ``<run id>.log``: each run's process output; ``cancel/<run id>``: cancel requests; ``exports/``.

The design: one detached queue runner per launch runs each run as its own process, at most ``jobs`` at once
per device slot, and the slots' places are shared between launches through ``flock``ed lock files. So the
queue advances with the app closed, a crash or OOM of one run touches nothing else, and the app only reads
these files.

Slots and places: a slot is a device a launch may use (``cpu``, or ``gpu0``, ``gpu1``, ...; ``ray`` for a
launch on a Ray cluster). Each slot has ``jobs`` places (:func:`dpcore.parallel.capacity`, from ``run.jobs``:
on the CPU ``cores // run.threads`` by default, each run with its share of the cores; on a GPU 4 by
default), computed here when the launch is written and stored in ``launch.json`` as ``capacity``
(``{"cpu": {"jobs": 2, "threads": 1}}``), so the runner needs neither torch nor the config. A run records
its slot (``cpu``) and the place it took (``cpu#1``: place 1 of the CPU).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpcore.config import Config
from dpcore.errors import DPError
from dpcore import parallel

from .logs import tail_lines

LAUNCHES = "launches"
RUNNER = "dptui.launches.runner"  # the queue runner's module: ``python -m RUNNER LAUNCH_DIR``
RAY_SLOT = "ray"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _proc_state(pid: int) -> tuple[bool, str]:
    """(alive, command line) of a process; zombies count as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, ""
    except PermissionError:
        return True, ""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True, ""
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False, ""
        return True, (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except (OSError, IndexError):
        return True, ""


def process_alive(pid: int | None, expect: str | None = None) -> bool:
    """Whether ``pid`` runs, and (where /proc tells) its command line contains ``expect``: a reused pid
    of an unrelated process does not count."""
    if not pid:
        return False
    alive, cmdline = _proc_state(int(pid))
    return alive and (not expect or not cmdline or expect in cmdline)


def last_error(log: Path) -> str | None:
    """The line that says why a run's process failed: its ``error:`` line, else a traceback's last line."""
    lines = tail_lines(log, 60)
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            tail = [ln for ln in lines[i + 1:] if not ln.startswith(" ")]
            return tail[-1] if tail else None
    return None


@dataclass
class LaunchEntry:
    """A run as its latest launch sees it."""

    run_id: str
    launch_dir: Path
    info: dict  # experiment, method, seed, dataset, model, device, rounds (from the plan); est_wall_s, places
    state: str  # queued, running, exited, cancelled
    created: float
    slots: list[str]
    pid: int | None = None
    rc: int | None = None
    slot: str | None = None
    place: str | None = None  # which of the slot's places the run took (``cpu#1``)
    runner_alive: bool = False
    pid_alive: bool = False
    cancel_requested: bool = False
    error: str | None = None
    log_path: Path | None = None

    def signature(self) -> tuple:
        return (str(self.launch_dir), self.state, self.pid, self.rc, self.runner_alive, self.pid_alive,
                self.cancel_requested, self.error)


@dataclass
class _Launch:
    spec: dict
    state_key: tuple = ()
    state: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # run id -> (log signature, error)


class Launcher:
    """Starts launches and reads their records (thread-safe for one reader thread plus UI calls)."""

    def __init__(self, runs_dir: Path, data_root: str | None = None, *, python: str = sys.executable,
                 gpu_count: int | None = None, cwd: Path | None = None):
        self.runs_dir = Path(runs_dir).absolute()
        self.data_root = str(Path(data_root).absolute()) if data_root else None
        self.python = python
        self.cwd = Path(cwd or Path.cwd()).absolute()
        self._gpus = gpu_count
        self._launches: dict[str, _Launch] = {}
        self._children: list[subprocess.Popen] = []

    @property
    def root(self) -> Path:
        return self.runs_dir / LAUNCHES

    # -- devices -------------------------------------------------------------------------------
    def gpu_count(self) -> int:
        if self._gpus is None:
            try:
                import torch

                self._gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            except Exception:  # noqa: BLE001 - no usable CUDA means CPU only
                self._gpus = 0
        return self._gpus

    def device_slots(self) -> list[str]:
        """Every slot a launch may use: one per GPU, or the CPU."""
        n = self.gpu_count()
        return [f"gpu{i}" for i in range(n)] or ["cpu"]

    @staticmethod
    def device_type(slots: list[str]) -> str:
        return "cuda" if any(s.startswith("gpu") for s in slots) else "cpu"

    @staticmethod
    def on_ray(slots: list[str]) -> bool:
        """The pseudo-slot ``ray``: the launch's runs go to a Ray cluster (``run.executor = "ray"``)."""
        return RAY_SLOT in slots

    def capacity(self, cfg: Config, slots: list[str]) -> dict[str, parallel.Capacity]:
        """How many runs each slot takes at once (and the CPU threads of each): ``run.jobs`` places on the CPU,
        each run with its share of the cores (``run.threads``, else ``cores // jobs``); ``run.jobs`` places on
        each GPU (0 = auto). Nothing for a Ray launch: the cluster places its runs."""
        if self.on_ray(slots):
            return {}
        if self.device_type(slots) == "cpu":
            return {"cpu": parallel.capacity("cpu", cfg.run.jobs, cfg.run.threads)}
        per_gpu = parallel.capacity("cuda", cfg.run.jobs, 0, gpus=1)
        return {s: per_gpu for s in slots if s.startswith("gpu")}

    # -- starting ------------------------------------------------------------------------------
    def argv(self, launch_dir: Path, run_id: str | None, run_ids: list[str] | None = None) -> list[str]:
        """The command of one run (``run_id``), or of a Ray launch's driver (``run_ids``)."""
        ids = run_ids if run_id is None else [run_id]
        argv = [self.python, "-m", "dptui", "--headless", "--profile", str(launch_dir / "profile.toml"),
                "--runs-dir", str(self.runs_dir), *[a for rid in ids for a in ("--run-id", rid)],
                "--out", str(launch_dir / "exports" / (run_id or "all"))]
        if self.data_root:
            argv += ["--data-root", self.data_root]
        return argv

    def plan(self, cfg: Config, slots: list[str]):
        """(config with the slots' device, its run plans), planned by the front door."""
        from dpcore.experiment import Experiment

        if self.on_ray(slots):
            exp = Experiment(replace(cfg, run=replace(cfg.run, executor="ray")), self.runs_dir, self.data_root)
        else:
            device = self.device_type(slots)
            exp = Experiment(replace(cfg, run=replace(cfg.run, device=device, executor="local")), self.runs_dir,
                             self.data_root, device=device)
        return exp.cfg, exp.plans

    def launch(self, cfg: Config, slots: list[str], only: list[str] | None = None,
               estimates: dict[str, float] | None = None) -> tuple[Path, list[str]]:
        """Write the launch folder and start its detached queue runner; returns (folder, run ids).
        ``estimates``: run id -> its estimated wall time (s), kept for the ETA of a run before its first round ends."""
        from dpcore.profiles import dumps
        from dpcore.store import atomic_write_text

        slots = [RAY_SLOT] if self.on_ray(slots) else [s for s in slots if s.startswith("gpu")] or ["cpu"]
        cfg, plans = self.plan(cfg, slots)
        if only is not None:
            plans = [p for p in plans if p.run_id in only]
        if not plans:
            raise DPError("nothing to launch: no run of this profile is selected")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            launch_dir = self.root / f"{slug(cfg.experiment.name)}-{stamp}" if i == 0 else \
                self.root / f"{slug(cfg.experiment.name)}-{stamp}-{i}"
            try:
                launch_dir.mkdir()
                break
            except FileExistsError:
                continue
        atomic_write_text(launch_dir / "profile.toml", dumps(cfg))
        ray = self.on_ray(slots)
        runs = [{"run_id": p.run_id, "method": p.method, "variant": p.variant, "seed": p.seed, "experiment": cfg.experiment.name,
                 "dataset": cfg.data.dataset, "model": cfg.model.name,
                 "device": f"{cfg.run.device} on ray" if ray else self.device_type(slots),
                 "rounds": cfg.prune.rounds, "argv": self.argv(launch_dir, p.run_id),
                 "log": "driver.log" if ray else f"{p.run_id}.log",
                 **({"est_wall_s": estimates[p.run_id]} if estimates and p.run_id in estimates else {})}
                for p in plans]
        spec = {"version": 1, "created": time.time(), "runs_dir": str(self.runs_dir), "cwd": str(self.cwd),
                "data_root": self.data_root, "slots": slots, "runs": runs,
                "capacity": {s: {"jobs": c.jobs, "threads": c.threads} for s, c in self.capacity(cfg, slots).items()}}
        if ray:  # one Ray driver for all of the launch's runs (it spreads them over the cluster)
            spec["executor"] = "ray"
            spec["driver_argv"] = self.argv(launch_dir, None, [p.run_id for p in plans])
        atomic_write_text(launch_dir / "launch.json", json.dumps(spec, indent=1))
        self.start_runner(launch_dir)
        return launch_dir, [p.run_id for p in plans]

    def start_runner(self, launch_dir: Path) -> int:
        with open(launch_dir / "runner.log", "ab") as log:
            proc = subprocess.Popen([self.python, "-m", RUNNER, str(launch_dir)],
                                    start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.cwd, close_fds=True)
        (launch_dir / "runner.pid").write_text(f"{proc.pid}\n")
        self._children.append(proc)
        return proc.pid

    # -- cancel and resume ---------------------------------------------------------------------
    def cancel(self, entry: LaunchEntry | None) -> str:
        """Ask for a run to stop (queued: never starts; running: SIGINT, stops after the current step)."""
        if entry is None:
            raise DPError("this run was not started from the dashboard; stop it with Ctrl-C where it runs")
        marker = entry.launch_dir / "cancel" / entry.run_id
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
        if entry.state == "running" and entry.pid_alive and not entry.runner_alive and not self.on_ray(entry.slots):
            # Its runner is gone, so nobody else will signal it.
            try:
                os.killpg(int(entry.pid), signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
            return "sent SIGINT: it stops after the current step"
        return "cancel requested: it stops after the current step" if entry.state == "running" else \
            "cancel requested: it will not start"

    def resume(self, run_id: str, entry: LaunchEntry | None) -> tuple[Path, list[str]]:
        """Start a run again; the engine resumes after its last finished round."""
        from dpcore.profiles import load_profile
        from dpcore.run_config import load_run_config

        if entry is not None and (entry.launch_dir / "profile.toml").exists():
            cfg, _ = load_profile(str(entry.launch_dir / "profile.toml"))
            slots = entry.slots if self.device_type(entry.slots) == "cpu" else self.device_slots()  # ray stays ray
        else:  # not launched from the app: its own config.toml
            spec = load_run_config(self.runs_dir / run_id)
            cfg, slots = spec.cfg, (["cpu"] if spec.device == "cpu" else self.device_slots())
        return self.launch(cfg, slots, only=[run_id])

    # -- reading records -----------------------------------------------------------------------
    def entries(self) -> dict[str, LaunchEntry]:
        """Every launched run's entry from its latest launch."""
        for proc in self._children:
            proc.poll()  # reap finished runners
        self._children = [p for p in self._children if p.returncode is None]
        try:
            dirs = sorted(d for d in self.root.iterdir() if d.is_dir())
        except OSError:
            return {}
        out: dict[str, LaunchEntry] = {}
        launches = []
        for d in dirs:
            launch = self._load(d)
            if launch is not None:
                launches.append((launch.spec.get("created", 0.0), d.name, d, launch))
        for _, _, d, launch in sorted(launches, key=lambda x: (x[0], x[1])):
            for entry in self._entries_of(d, launch):
                out[entry.run_id] = entry
        return out

    def _load(self, d: Path) -> _Launch | None:
        launch = self._launches.get(d.name)
        if launch is None:
            try:
                spec = json.loads((d / "launch.json").read_text())
            except (OSError, ValueError):
                return None
            launch = self._launches[d.name] = _Launch(spec)
        try:
            st = os.stat(d / "state.json")
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = ()
        if key != launch.state_key:
            try:
                launch.state = json.loads((d / "state.json").read_text()) if key else {}
                launch.state_key = key
            except (OSError, ValueError):
                pass
        return launch

    def _entries_of(self, d: Path, launch: _Launch) -> list[LaunchEntry]:
        spec, state = launch.spec, launch.state
        runner_pid = state.get("runner_pid")
        if runner_pid is None:
            try:
                runner_pid = int((d / "runner.pid").read_text())
            except (OSError, ValueError):
                runner_pid = None
        finished = "finished_at" in state
        runner_alive = not finished and process_alive(runner_pid, RUNNER)
        cancels = set(os.listdir(d / "cancel")) if (d / "cancel").is_dir() else set()
        # the launch's places (runs at once over its slots; none on Ray, whose cluster places its runs)
        places = sum(int(c.get("jobs", 0)) for c in spec.get("capacity", {}).values()) or None
        out = []
        for run in spec.get("runs", []):
            rid = run["run_id"]
            rs = state.get("runs", {}).get(rid, {})
            info = {k: run.get(k) for k in ("experiment", "method", "seed", "dataset", "model", "device", "rounds",
                                            "est_wall_s")}
            entry = LaunchEntry(rid, d, {**info, "places": places},
                                rs.get("state", "queued"), spec.get("created", 0.0), list(spec.get("slots", [])),
                                pid=rs.get("pid"), rc=rs.get("rc"), slot=rs.get("slot"), place=rs.get("place"),
                                runner_alive=runner_alive,
                                cancel_requested=rid in cancels, log_path=d / run.get("log", f"{rid}.log"))
            if entry.state == "running":
                entry.pid_alive = process_alive(entry.pid, rid)
            if entry.state == "exited" and entry.rc not in (0, 130):
                entry.error = self._error(launch, rid, entry.log_path)
            out.append(entry)
        return out

    @staticmethod
    def _error(launch: _Launch, rid: str, log: Path) -> str | None:
        try:
            st = os.stat(log)
            key = (st.st_mtime_ns, st.st_size)
        except OSError:
            return None
        cached = launch.errors.get(rid)
        if cached is None or cached[0] != key:
            cached = launch.errors[rid] = (key, last_error(log))
        return cached[1]
