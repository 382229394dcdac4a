"""Compare: accuracy vs sparsity of several runs or experiments, time-to-mask and the speed-up."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Label, SelectionList, Static
from textual_plotext import PlotextPlot

from dpcore.summary import Stat, Table, experiment_tables, headline_lines, rounds_table

from .model import RunView, pct, secs
from .dash_screen import KEYS, DashScreen
from .widgets import RowTable


def mean(x: Any) -> float | None:
    return x.mean if isinstance(x, Stat) else x


def curves(views: list[RunView]) -> tuple[list[tuple[str, list[float], list[float]]], list[tuple[str, float]]]:
    """([(label, sparsity %, accuracy %)], [(label, dense accuracy %)]) grouped by experiment and method,
    averaged over seeds (validated accuracy; the inner accuracy where a run was not validated)."""
    experiments = sorted({v.experiment for v in views})
    many = len(experiments) > 1
    lines, dense = [], []
    for exp in experiments:
        table = rounds_table([v.results_for_tables() for v in views if v.experiment == exp])
        by_method: dict[str, list[dict]] = {}
        for row in table.rows:
            by_method.setdefault(row["method"], []).append(row)
        for method, rows in by_method.items():
            label = f"{exp}/{method}" if many else method
            if method == "dense":
                if mean(rows[0].get("val_acc")) is not None:
                    dense.append((f"{label}", 100 * mean(rows[0]["val_acc"])))
                continue
            pts = [(100 * r["sparsity"], mean(r.get("val_acc")) if r.get("val_acc") is not None
                    else mean(r.get("inner_test_acc"))) for r in rows]
            pts = [(x, 100 * y) for x, y in pts if y is not None]
            if pts:
                lines.append((label, [x for x, _ in pts], [y for _, y in pts]))
    return lines, dense


def remaining_ticks(sparsities_pct: list[float], most: int = 6) -> list[float]:
    """Up to ``most`` tick values of weights remaining (%), from 100 to the sparsest mask plotted, evenly spread on
    the log axis and each one a round's value (so a tick reads as that round's sparsity: 100 - tick)."""
    values = sorted({round(100 - s, 4) for s in sparsities_pct} | {100.0}, reverse=True)
    if len(values) <= most:
        return values
    step = (len(values) - 1) / (most - 1)
    return [values[round(i * step)] for i in range(most)]


def t2m_summary(views: list[RunView]) -> Text:
    """Per experiment and method: time-to-mask at its deepest round; then the headline, one line per method
    against imp (speed-up and accuracy at the deepest round both validated)."""
    out = Text()
    for exp in sorted({v.experiment for v in views}):
        results = [v.results_for_tables() for v in views if v.experiment == exp]
        table = rounds_table(results)
        last: dict[str, dict] = {}
        for row in table.rows:
            if row["method"] != "dense":
                last[row["method"]] = row
        parts = [f"{m} {secs(mean(r.get('time_to_mask_s')))} @ {pct(r['sparsity'])}" for m, r in last.items()]
        headline: list[str] = []
        for t in experiment_tables(results)[1:]:
            if t.title == "Headline":  # each method against imp at the deepest round both validated
                headline = headline_lines(t)
            elif t.title == "Distillers":  # several synthetic sources: each one's speed-up at its deepest round
                deepest = {row["distiller"]: row for row in t.rows if row.get("speedup")}
                if deepest:
                    parts.append("speed-up over imp: " + ", ".join(
                        f"{name} {row['speedup']:.2f}x @ {pct(row['sparsity'])}" for name, row in deepest.items()))
            elif t.title.startswith("Methods vs"):  # every other way to a mask, like distilled
                deepest = {row["method"]: row for row in t.rows if row.get("speedup")}
                if deepest:
                    parts.append("vs imp: " + ", ".join(
                        f"{name} {row['speedup']:.1f}x @ {pct(row['sparsity'])}" for name, row in deepest.items()))
        out.append(f"{exp}: ", style="bold")
        out.append("time-to-mask " + ("; ".join(parts) if parts else "- (no finished rounds)") + "\n")
        for line in headline:
            out.append("  " + line + "\n", style="green")
    out.rstrip()
    return out


class CompareScreen(DashScreen):
    BINDINGS = [
        KEYS,
        Binding("escape", "app.pop_screen", "Back"),
        Binding("t", "next_table", "Next table"),
        Binding("x", "toggle_axis", "Log/linear x"),
        Binding("a", "all", "All/none"),
        Binding("e", "export", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_ids: list[str]):
        super().__init__()
        self.run_ids = list(run_ids)
        self.table_index = 0
        self.log_axis = True  # x: weights remaining % on a log scale (the lottery-ticket axis); x toggles
        self._options: list[str] = []
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield self.title_line()
        with Horizontal(id="compare-body"):
            yield SelectionList[str](id="pick")
            with Vertical(id="compare-main"):
                yield PlotextPlot(id="acc-plot")
                yield Static("", id="t2m")
                yield Label("", id="table-title", classes="table-title")
                yield RowTable(id="compare-table")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#pick").border_title = "runs (space toggles)"
        self.query_one("#pick").focus()
        self.call_after_refresh(self.became_ready)

    def views(self) -> list[RunView]:
        views = self.dash.views
        return [views[r] for r in self.run_ids if r in views]

    def tables(self) -> list[Table]:
        views = self.views()
        experiments = sorted({v.experiment for v in views})
        out = []
        for exp in experiments:
            for t in experiment_tables([v.results_for_tables() for v in views if v.experiment == exp]):
                if len(experiments) > 1:
                    t.title = f"{exp}: {t.title}"
                out.append(t)
        return out

    def current_table(self) -> Table | None:
        tables = self.tables()
        return tables[self.table_index % len(tables)] if tables else None

    def export_name(self) -> str:
        t = self.current_table()
        return "compare-" + (t.title if t else "empty")

    def refresh_data(self) -> None:
        app = self.dash
        all_views = app.sorted_views()
        pick = self.query_one("#pick", SelectionList)
        ids = [v.run_id for v in all_views]
        if ids != self._options:
            self._options = ids
            pick.clear_options()
            pick.add_options([(f"{v.experiment} {v.group} s{v.seed} · {v.status}", v.run_id, v.run_id in self.run_ids)
                              for v in all_views])
        views = self.views()
        key = tuple(views)
        if self._shown is not None and len(self._shown) == len(key) and all(a is b for a, b in zip(self._shown, key)):
            return
        self._shown = key
        self.set_title(Text.assemble(("Compare", "bold"), f"  {len(views)} runs: "
                                     + ", ".join(sorted({f'{v.experiment}' for v in views})) if views else ""))
        self._plot(views)
        self.query_one("#t2m", Static).update(t2m_summary(views) if views else "pick two or more runs on the left")
        self._show_table()

    def _plot(self, views: list[RunView]) -> None:
        widget = self.query_one("#acc-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_figure()
        lines, dense = curves(views)
        dense_text = ", ".join(f"{label} {y:.2f}%" for label, y in dense)
        axis = "weights remaining % (log)" if self.log_axis else "sparsity %"
        plt.title(f"validated accuracy % vs {axis}" + (f"  (line: {dense_text})" if dense else ""))
        for label, xs, ys in lines:
            plt.plot([self.x_of(x) for x in xs], ys, label=label, marker="braille")
        for _, y in dense:
            plt.hline(y, "gray")
        if lines and self.log_axis:
            ticks = remaining_ticks([x for _, xs, _ in lines for x in xs])
            plt.xticks([self.x_of(100 - r) for r in ticks], [f"{r:.3g}" for r in ticks])
            plt.xlim(self.x_of(0.0), self.x_of(100 - ticks[-1]))  # from 100% of the weights to the fewest
        plt.xlabel(axis)
        if not lines:
            plt.title("no finished rounds in the picked runs yet")
        widget.refresh()

    def x_of(self, sparsity_pct: float) -> float:
        """Where a sparsity goes on the x axis: -log10(weights remaining %) (100% at the left, the sparsest
        masks to the right, each halving of the weights the same width), or the sparsity itself."""
        return -math.log10(max(100.0 - sparsity_pct, 1e-3)) if self.log_axis else sparsity_pct

    def action_toggle_axis(self) -> None:
        self.log_axis = not self.log_axis
        self._plot(self.views())

    def _show_table(self) -> None:
        tables = self.tables()
        title = self.query_one("#table-title", Label)
        table_widget = self.query_one("#compare-table", RowTable)
        if not tables:
            title.update("")
            table_widget.set_data([], [])
            return
        t = tables[self.table_index % len(tables)]
        title.update(Text.assemble((t.title, "bold"), f"  ({self.table_index % len(tables) + 1}/{len(tables)}, t: next)"))
        table_widget.show_table(t)

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.run_ids = list(event.selection_list.selected)
        self.table_index = 0
        self.refresh_data()

    def action_next_table(self) -> None:
        self.table_index += 1
        self._show_table()

    def action_all(self) -> None:
        pick = self.query_one("#pick", SelectionList)
        if pick.selected:
            pick.deselect_all()
        else:
            pick.select_all()
