"""Run detail, live: rounds table, accuracy sparklines, time bars, epoch progress with ETA, log tail."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Label, Log, ProgressBar, Sparkline, Static

from dpcore.summary import Table, rounds_table

from .model import RunView, eta_text, experiment_left, pct, secs
from .dash_screen import KEYS, DashScreen
from .widgets import STATUS_STYLE, RowTable, TimeBars


class DetailScreen(DashScreen):
    BINDINGS = [
        KEYS,
        Binding("escape", "app.pop_screen", "Back"),
        Binding("p", "compare", "Compare"),
        Binding("i", "interpolation", "Interp"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "resume", "Resume"),
        Binding("e", "export", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield self.title_line()
        with Horizontal(id="progress-row"):
            yield Label("", id="stage")
            yield ProgressBar(total=1, show_eta=False, show_percentage=True, id="epoch")
            yield Label("", id="eta")
        yield Static("", id="run-eta")
        yield Static("", id="error", classes="error")
        yield RowTable(id="rounds")
        with Horizontal(id="charts"):
            with Vertical(id="sparks"):
                yield Label("", id="inner-label", classes="spark-label")
                yield Sparkline([], id="inner-spark")
                yield Label("", id="val-label", classes="spark-label")
                yield Sparkline([], id="val-spark")
            yield TimeBars("", id="bars")
        yield Log(id="log", max_lines=500, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.dash.watch_run(self.run_id)
        self.query_one("#rounds").focus()
        self.call_after_refresh(self.became_ready)

    def on_unmount(self) -> None:
        self.dash.watch_run(self.run_id, on=False)

    @property
    def view(self) -> RunView | None:
        return self.dash.views.get(self.run_id)

    def current_table(self) -> Table | None:
        view = self.view
        return rounds_table([view.results_for_tables()]) if view else None

    def export_name(self) -> str:
        v = self.view
        return f"rounds-{v.experiment}-{v.method}-s{v.seed}-{self.run_id}" if v else f"rounds-{self.run_id}"

    def refresh_data(self) -> None:
        app = self.dash
        view = self.view
        if view is None:
            self.set_title(Text(f"Run {self.run_id}: not in the store (yet)", style="bold"))
            return
        tail = app.log_tails.get(self.run_id)
        eta = self._eta_line(view)  # other runs of the experiment change it too
        key = (len(tail or ()), tail[-1] if tail else None, eta)
        if self._shown is not None and self._shown[0] is view and self._shown[1] == key:
            return
        self._shown = (view, key)
        self.set_title(Text.assemble(
            (f"{view.experiment or '?'} · {view.group or '?'} seed {view.seed}", "bold"), " · ",
            (view.status, STATUS_STYLE.get(view.status, "")),
            f" · round {len(view.rows)}/{view.rounds_planned or '?'} · ", (self.run_id, "dim"),
            f" · {view.dataset}/{view.model} · {view.device or '?'}"))
        self._show_progress(view)
        run_eta = self.query_one("#run-eta", Static)
        run_eta.display = bool(eta)
        run_eta.update(eta)
        error = self.query_one("#error", Static)
        error.display = bool(view.error)
        error.update(Text(f"error: {view.error}", style="bold red") if view.error else "")
        self.query_one(RowTable).show_table(rounds_table([view.results_for_tables()]),
                                            key_of=lambda row: f"{row['method']}-{row['round']}")
        self._show_charts(view)
        self._show_log(view, tail)

    def _show_progress(self, view: RunView) -> None:
        live = view.live
        bar = self.query_one("#epoch", ProgressBar)
        stage, eta = self.query_one("#stage", Label), self.query_one("#eta", Label)
        bar.display = view.active and live is not None and bool(live.epochs)
        if live is None or not view.active or not live.stage:
            stage.update({"queued": "waiting for a free device slot", "pending": "starting",
                          "stalled": "queued, but its queue runner is gone: r starts it again"}
                         .get(view.status, view.status))
            eta.update("")
            return
        where = f"round {live.round} · " if live.round else ""
        what = "step" if live.stage == "distill" else "epoch"
        loss = f" · loss {live.loss:.3f}" if live.loss is not None else ""
        progress = f"{what} {live.epoch}/{live.epochs}{loss}" if live.epochs else "starting"
        stage.update(f"{where}{live.stage} · {progress}")
        bar.update(total=max(live.epochs, 1), progress=live.epoch)
        eta.update(f"ETA {secs(live.eta_s)}" if live.eta_s is not None and live.epochs else "")

    def _eta_line(self, view: RunView) -> str:
        """The run's time left and its experiment's (its active runs, as many at once as their launch runs)."""
        text = eta_text(view)
        left = experiment_left([self.dash.views[r] for r in self.dash.experiment_of(self.run_id)]) if text else None
        return f"{text} · {left.text()}" if left is not None else text

    def _show_charts(self, view: RunView) -> None:
        rows = view.rows
        inner = [r.inner_test_acc for r in rows if r.inner_test_acc is not None]
        val = [r.val_acc for r in rows if r.val_acc is not None]
        kind = "synthetic" if view.method == "distilled" else "real"
        for name, data, label in (("inner", inner, f"inner acc ({kind} training)"), ("val", val, "validated acc (real)")):
            text = f"{label}: " + (f"{pct(data[0])} → {pct(data[-1])}" if data else "-")
            self.query_one(f"#{name}-label", Label).update(text)
            spark = self.query_one(f"#{name}-spark", Sparkline)
            spark.data = [100 * x for x in data]
            spark.visible = bool(data)  # keeps its line, draws nothing
        self.query_one(TimeBars).show(rows, view.method, width=self.query_one("#bars").size.width or None)

    def _show_log(self, view: RunView, tail: list[str] | None) -> None:
        lines = list(tail) if tail else (list(view.live.log) if view.live else [])
        if not lines and view.error:
            lines = [f"error: {view.error}"]
        log = self.query_one(Log)
        log.clear()
        log.write_lines(lines[-200:] or ["(no log yet)"])

    # -- actions ---------------------------------------------------------------------------------
    def action_compare(self) -> None:
        if self.view:
            self.dash.open_compare(self.dash.experiment_of(self.run_id))

    def action_interpolation(self) -> None:
        self.dash.open_interpolation(self.run_id)

    def action_cancel(self) -> None:
        self.dash.cancel_run(self.run_id)

    def action_resume(self) -> None:
        self.dash.resume_run(self.run_id)

    def on_resize(self) -> None:
        self._shown = None  # the time bars scale to the width
        if self.ready:
            self.refresh_data()
