"""The dashboard app: owns the store state, the poll loop and one follower worker per live run.

Background work never blocks the UI: a single poll-loop worker (a thread, so it never overlaps itself)
rescans the store every ``poll_s`` seconds, and one follower worker per live run tails its
``events.jsonl`` every ``follow_s``. Workers hand their latest state to a :class:`Mailbox` and post a
message only when the mailbox was empty, so a burst of progress costs the UI one message and one refresh.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.worker import get_current_worker

from dpcore.summary import Table
from dptui.launches.launcher import Launcher, slug

from .follow import Mailbox, RunFollower, StoreScanner, StoreSnapshot
from .model import RunLive, RunView, build_view


class LoadChanged(Message):
    """The machine's load line changed (sampled by a worker thread)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text


class StoreChanged(Message):
    """The poll loop saw the store change (the new snapshot waits in the mailbox)."""


class RunChanged(Message):
    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id


class Notice(Message):
    """A worker has something to tell the user."""

    def __init__(self, text: str, severity: str = "information"):
        super().__init__()
        self.text, self.severity = text, severity


class FollowEnded(Message):
    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id


class DashboardApp(App):
    """``dptui``: launch, watch and compare pruning runs."""

    CSS_PATH = "styles.tcss"
    TITLE = "dptui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("ctrl+t", "toggle_theme", "Theme"),
        Binding("f1", "toggle_keys", "Keys", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]
    THEMES = ("textual-dark", "textual-light")

    def __init__(self, runs_dir: Path, *, profile: str = "quickstart", overrides: list[str] | None = None,
                 data_root: str | None = None, launcher: Launcher | None = None, gpu_count: int | None = None,
                 poll_s: float = 1.0, follow_s: float = 0.25, blink: bool = True, theme: str = "textual-dark",
                 start_screen: str = "runs", load_probe=None, load_s: float = 3.0):
        super().__init__()
        self.runs_dir_display = str(runs_dir)
        self.runs_dir = Path(runs_dir).absolute()
        self.profile, self.overrides, self.data_root = profile, list(overrides or []), data_root
        self.launcher = launcher or Launcher(self.runs_dir, data_root, gpu_count=gpu_count)
        self.scanner = StoreScanner(self.runs_dir, self.launcher)
        self.poll_s, self.follow_s, self.blink = poll_s, follow_s, blink
        self.initial_theme, self.start_screen = theme, start_screen
        self.snapshot = StoreSnapshot()
        self.views: dict[str, RunView] = {}
        self.lives: dict[str, RunLive] = {}
        self.log_tails: dict[str, list[str]] = {}
        self.followers: dict[str, RunFollower] = {}
        self._following: set[str] = set()
        self._wanted: frozenset[str] = frozenset()
        self.watched: set[str] = set()  # runs a screen shows live (e.g. Run detail), followed even when done
        self.mail = Mailbox()
        self._wake = threading.Event()
        self._refresh_pending = False
        self.loaded = False
        self.data_version = 0  # bumped whenever views or lives change; a screen records the one it drew
        self.counts = {"store_changed": 0, "run_changed": 0, "refreshes": 0}
        # The header's load line: a callable returning it (tests pass a fixed one), sampled every ``load_s`` s.
        self.load_probe, self.load_s, self.load_text = load_probe, load_s, ""

    # -- lifecycle -----------------------------------------------------------------------------
    def on_mount(self) -> None:
        from .runs_screen import RunsScreen

        self.theme = self.initial_theme
        self.push_screen(RunsScreen())
        if self.start_screen == "launch":
            self.open_launch()
        self.poll_loop()
        self.load_loop()

    # -- the machine's load ----------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="load", exclusive=True, name="sample load")
    def load_loop(self) -> None:
        """Sample the load of the devices the runs use (CPU and memory; each GPU) off the UI thread."""
        worker = get_current_worker()
        if self.load_probe is None:
            from .load import LoadProbe

            self.load_probe = LoadProbe(self.launcher.gpu_count())
        last = None
        while not worker.is_cancelled:
            try:
                text = self.load_probe()
            except Exception as err:  # noqa: BLE001 - the header says it cannot read the load; the app goes on
                text = f"load unreadable ({type(err).__name__})"
            if text != last:
                last = text
                self.post_message(LoadChanged(text))
            end = time.monotonic() + self.load_s
            while not worker.is_cancelled and time.monotonic() < end:  # short waits: quitting never waits on it
                time.sleep(0.1)

    def on_load_changed(self, message: LoadChanged) -> None:
        self.load_text = message.text
        screen = self.screen
        if getattr(screen, "show_load", None) is not None:
            screen.show_load()

    def active_run_count(self) -> int:
        return sum(1 for v in self.views.values() if v.active)

    # -- the poll loop ---------------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="poll", exclusive=True, name="poll store")
    def poll_loop(self) -> None:
        worker = get_current_worker()
        last = None
        while not worker.is_cancelled:
            try:
                snap = self.scanner.scan()
            except Exception as err:  # noqa: BLE001 - keep polling; say what went wrong
                self.post_message(Notice(f"reading the run store failed: {err}", "error"))
                snap = None
            if snap is not None and snap.signature != last:
                last = snap.signature
                if self.mail.put("store", snap):
                    self.post_message(StoreChanged())
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def poke(self) -> None:
        """Rescan now (after a launch, cancel or resume)."""
        self._wake.set()

    def on_store_changed(self, message: StoreChanged) -> None:
        snap = self.mail.take("store")
        if snap is None:
            return
        self.counts["store_changed"] += 1
        self.data_version += 1
        old = self.snapshot
        self.snapshot = snap
        for run_id in set(snap.results) | set(snap.entries):
            res, entry = snap.results.get(run_id), snap.entries.get(run_id)
            prev = self.views.get(run_id)
            old_entry = old.entries.get(run_id)
            if prev is None or prev.results is not res or \
                    (entry.signature() if entry else None) != (old_entry.signature() if old_entry else None):
                self.views[run_id] = build_view(run_id, res, self.lives.get(run_id), entry)
        for run_id in set(self.views) - set(snap.results) - set(snap.entries):
            del self.views[run_id]
        self.loaded = True
        self._update_followers()
        self.schedule_refresh()

    # -- followers -------------------------------------------------------------------------------
    def _update_followers(self) -> None:
        wanted = {rid for rid, v in self.views.items() if v.active} | (self.watched & set(self.views))
        self._wanted = frozenset(wanted)
        for run_id in wanted:
            self._ensure_follower(run_id)

    def watch_run(self, run_id: str | None, on: bool = True) -> None:
        """Follow ``run_id``'s events while a screen shows it (reads a finished run's events once)."""
        if run_id is None:
            return
        (self.watched.add if on else self.watched.discard)(run_id)
        self._update_followers()

    def _ensure_follower(self, run_id: str) -> None:
        entry = self.snapshot.entries.get(run_id)
        follower = self.followers.get(run_id)
        if follower is None:
            follower = self.followers[run_id] = RunFollower(self.runs_dir / run_id, run_id)
        follower.log_path = entry.log_path if entry is not None else None
        if run_id in self._following:
            return
        self._following.add(run_id)
        self.run_worker(partial(self._follow, run_id, follower), thread=True, exit_on_error=False,
                        group="follow", name=f"follow {run_id}")

    def _follow(self, run_id: str, follower: RunFollower) -> None:
        worker = get_current_worker()
        try:
            while not worker.is_cancelled:
                if follower.poll() and self.mail.put(("run", run_id), follower.snapshot()):
                    self.post_message(RunChanged(run_id))
                if run_id not in self._wanted:
                    break
                time.sleep(self.follow_s)
        finally:
            self.post_message(FollowEnded(run_id))

    def on_notice(self, message: Notice) -> None:
        self.notify(message.text, severity=message.severity)

    def on_follow_ended(self, message: FollowEnded) -> None:
        self._following.discard(message.run_id)
        if message.run_id in self._wanted:
            self._ensure_follower(message.run_id)

    def on_run_changed(self, message: RunChanged) -> None:
        snap = self.mail.take(("run", message.run_id))
        if snap is None:
            return
        self.counts["run_changed"] += 1
        self.data_version += 1
        live, tail = snap
        run_id = message.run_id
        self.lives[run_id], self.log_tails[run_id] = live, tail
        if run_id in self.views or run_id in self.snapshot.results:
            self.views[run_id] = build_view(run_id, self.snapshot.results.get(run_id), live,
                                            self.snapshot.entries.get(run_id))
        self._update_followers()
        self.schedule_refresh()

    # -- refreshing screens ----------------------------------------------------------------------
    def schedule_refresh(self) -> None:
        """Refresh the visible screen once after the messages already queued (coalesced)."""
        if not self._refresh_pending:
            self._refresh_pending = True
            self.call_later(self._refresh_screen)

    def _refresh_screen(self) -> None:
        self._refresh_pending = False
        self.counts["refreshes"] += 1
        if getattr(self.screen, "ready", False):
            try:
                self.screen.redraw()
            except Exception as err:  # noqa: BLE001 - a run's odd files must not take the app down
                self.notify(f"cannot show this screen's data: {type(err).__name__}: {err}", severity="error")

    def sorted_views(self) -> list[RunView]:
        return sorted(self.views.values(), key=RunView.sort_key)

    # -- navigation ------------------------------------------------------------------------------
    def open_detail(self, run_id: str) -> None:
        from .detail_screen import DetailScreen

        self.push_screen(DetailScreen(run_id))

    def open_compare(self, run_ids: list[str]) -> None:
        from .compare_screen import CompareScreen

        self.push_screen(CompareScreen(run_ids))

    def open_interpolation(self, run_id: str | None) -> None:
        from .interpolation_screen import InterpolationScreen

        self.push_screen(InterpolationScreen(run_id))

    def open_launch(self) -> None:
        from .launch_screen import LaunchScreen

        self.push_screen(LaunchScreen(self.profile, self.overrides))

    def experiment_of(self, run_id: str) -> list[str]:
        """The runs of ``run_id``'s experiment (same name, dataset and model)."""
        v = self.views[run_id]
        key = (v.experiment, v.dataset, v.model)
        return [w.run_id for w in self.sorted_views() if (w.experiment, w.dataset, w.model) == key]

    # -- run control -----------------------------------------------------------------------------
    def cancel_run(self, run_id: str) -> None:
        from .widgets import ConfirmModal

        view = self.views.get(run_id)
        if view is None or not view.active:
            self.notify(f"{view.label if view else run_id} is not running or queued", severity="warning")
            return
        if view.entry is None:
            self.notify("this run was not started from the dashboard; stop it with Ctrl-C where it runs",
                        severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                try:
                    self.notify(f"{view.label}: {self.launcher.cancel(view.entry)}")
                except Exception as err:  # noqa: BLE001 - show, never crash
                    self.notify(str(err), severity="error")
                self.poke()

        self.push_screen(ConfirmModal(f"Cancel {view.label} ({run_id})? It stops after the current step; "
                                      "r resumes it."), answer)

    def resume_run(self, run_id: str) -> None:
        from .model import RESUMABLE

        view = self.views.get(run_id)
        if view is None:
            return
        if view.status not in RESUMABLE:
            self.notify(f"{view.label} is {view.status}; only stopped, failed, interrupted or cancelled runs "
                        "resume", severity="warning")
            return
        try:
            launch_dir, _ = self.launcher.resume(run_id, view.entry)
        except Exception as err:  # noqa: BLE001
            self.notify(f"cannot resume: {err}", severity="error")
            return
        self.notify(f"{view.label}: resuming ({launch_dir.name})")
        self.poke()

    # -- export ----------------------------------------------------------------------------------
    def export(self, name: str, table: Table | None, fmt: str) -> Path | None:
        """Write ``table`` (or, for svg, a screenshot of the screen) to ``<runs>/exports/``."""
        from dptui.export import to_csv, to_html, to_json, to_markdown

        out_dir = self.runs_dir / "exports"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{slug(name)}.{fmt}"
        if fmt == "svg":
            self.save_screenshot(filename=path.name, path=str(out_dir))
        else:
            if table is None:
                self.notify("nothing to export here", severity="warning")
                return None
            text = {"csv": lambda: to_csv(table), "md": lambda: to_markdown([table]),
                    "html": lambda: to_html([table], f"dptui: {table.title}"),
                    "json": lambda: to_json([table])}[fmt]()
            from dpcore.store import atomic_write_text

            atomic_write_text(path, text)
        self.notify(f"exported {path}")
        return path

    def ask_export(self, name: str, table: Table | None) -> None:
        from .widgets import ExportModal

        def done(fmt: str | None) -> None:
            if fmt == "svg":  # the dialog is off the stack already; shoot once the screen under it has refreshed
                self.call_after_refresh(self.export, name, table, "svg")
            elif fmt:
                self.export(name, table, fmt)

        self.push_screen(ExportModal(table.title if table is not None else "this screen"), done)

    # -- app actions -----------------------------------------------------------------------------
    def action_toggle_theme(self) -> None:
        self.theme = self.THEMES[1] if self.theme == self.THEMES[0] else self.THEMES[0]

    def action_toggle_keys(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def notify(self, message: str, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("timeout", 6)
        kwargs["markup"] = False  # messages carry paths and error texts, never markup
        super().notify(message, **kwargs)
