"""Interpolation: instability curves (accuracy vs interpolation alpha) of a run, when it has them."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from dpcore.summary import Table, ticket_table

from .model import RunView, instability_items, instability_table
from .dash_screen import KEYS, DashScreen
from .widgets import RowTable

EMPTY = ("No interpolation analysis for {label} yet.\n\n"
         "Instability curves (test accuracy along the linear path between two trainings of a round's mask, "
         "alpha from 0 to 1) appear here once the analysis writes an 'instability' list into the run's "
         "results.json.")


class InterpolationScreen(DashScreen):
    BINDINGS = [
        KEYS,
        Binding("escape", "app.pop_screen", "Back"),
        Binding("e", "export", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_id: str | None):
        super().__init__()
        self.run_id = run_id
        self._ids: list[str] = []
        self._shown: Any = None

    def compose(self) -> ComposeResult:
        yield self.title_line()
        with Horizontal(id="interp-body"):
            yield OptionList(id="interp-runs")
            with Vertical(id="interp-main"):
                yield Static("", id="interp-empty", classes="empty")
                yield PlotextPlot(id="interp-plot")
                yield RowTable(id="interp-table")
                tickets = RowTable(id="interp-tickets")
                tickets.display = False
                yield tickets
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#interp-runs").border_title = "runs (* has curves)"
        self.query_one("#interp-runs").focus()
        self.call_after_refresh(self.became_ready)

    @property
    def view(self) -> RunView | None:
        return self.dash.views.get(self.run_id) if self.run_id else None

    def current_table(self) -> Table | None:
        v = self.view
        return instability_table(v.results_for_tables()) if v and instability_items(v.results) else None

    def export_name(self) -> str:
        return f"instability-{self.run_id}"

    def refresh_data(self) -> None:
        app = self.dash
        views = app.sorted_views()
        runs = self.query_one("#interp-runs", OptionList)
        ids = [v.run_id for v in views]
        marks = [bool(instability_items(v.results)) for v in views]
        if (ids, marks, [v.status for v in views]) != self._ids:
            self._ids = (ids, marks, [v.status for v in views])
            runs.clear_options()
            runs.add_options([Option(f"{'*' if m else ' '} {v.label} · {v.status}", id=v.run_id)
                              for v, m in zip(views, marks)])
            if self.run_id in ids:
                runs.highlighted = ids.index(self.run_id)
        view = self.view
        if view is not None and self._shown is view:
            return
        self._shown = view
        items = instability_items(view.results) if view else []
        label = view.label if view else "this run"
        self.set_title(Text.assemble(("Interpolation", "bold"), f"  {label}  {self.run_id or ''}"))
        empty, plot, table = (self.query_one("#interp-empty", Static), self.query_one("#interp-plot", PlotextPlot),
                              self.query_one("#interp-table", RowTable))
        tickets = ticket_table([view.results_for_tables()]) if view else None
        ticket_view = self.query_one("#interp-tickets", RowTable)
        ticket_view.display = bool(tickets and tickets.rows)
        if ticket_view.display:  # the trained tickets' Hessian eigenvalue and loss-landscape slice
            ticket_view.show_table(tickets)
        empty.display = not items and not ticket_view.display
        plot.display = table.display = bool(items)
        if not items:
            empty.update(EMPTY.format(label=label) if view else "Pick a run on the left.")
            return
        plt = plot.plt
        plt.clear_figure()
        plt.title("test accuracy % along the interpolation path")
        plt.xlabel("alpha")
        for item in items:
            label = f"round {item['round']}" + (f" {item['rewind_text']}" if item["rewind_text"] else "")
            plt.plot(item["alphas"], [100 * a for a in item["test_acc"]], label=label, marker="braille")
        plot.refresh()
        table.show_table(instability_table(view.results_for_tables()))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self.run_id:
            self.run_id = event.option.id
            self.refresh_data()
