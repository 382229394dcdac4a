"""Compare: accuracy vs sparsity of several runs or experiments (each curve with its seeds' min–max, or its
difference to a pinned baseline), time-to-mask and the speed-up; each method in its dpcore.palette colour."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Label, SelectionList, Static
from textual_plotext import PlotextPlot

from dpcore.palette import cell_color, colors, rgb
from dpcore.summary import (SAME_SPARSITY, Stat, Table, _group, _round_rows, baseline_points, experiment_tables,
                            headline_lines, rounds_table, with_baseline)

from .model import RunView, pct, secs
from .dash_screen import KEYS, DashScreen
from .widgets import RowTable


def mean(x: Any) -> float | None:
    return x.mean if isinstance(x, Stat) else x


@dataclass
class Curve:
    """One line of the accuracy plot: a method (and synthetic source) of an experiment over its rounds, the mean
    over its seeds with their min and max (validated accuracy; the inner one where a round was not validated)."""

    key: tuple[str, str]  # (experiment, group): what a pinned baseline remembers
    label: str  # the legend's: the group, "experiment/group" when several experiments are shown
    color: str = ""  # dpcore.palette's colour of the group (in the experiment's shade when there are several)
    rounds: list[int] = field(default_factory=list)
    xs: list[float] = field(default_factory=list)  # sparsity %
    ys: list[float] = field(default_factory=list)  # accuracy % (mean over seeds)
    lo: list[float] = field(default_factory=list)  # min over seeds
    hi: list[float] = field(default_factory=list)  # max over seeds
    n: list[int] = field(default_factory=list)  # seeds at each point

    def band(self) -> tuple[list[float], list[float], list[float]]:
        """(x, min, max) where two or more seeds are averaged: one seed has no spread to show."""
        pts = [(x, lo, hi) for x, lo, hi, n in zip(self.xs, self.lo, self.hi, self.n) if n >= 2]
        return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]

    def minus(self, base: "Curve") -> "Curve":
        """This curve minus ``base``'s mean at the same rounds (their masks as sparse), in points."""
        ref = {r: (x, y) for r, x, y in zip(base.rounds, base.xs, base.ys)}
        out = Curve(self.key, self.label, self.color)
        for r, x, y, lo, hi, n in zip(self.rounds, self.xs, self.ys, self.lo, self.hi, self.n):
            if r in ref and abs(x - ref[r][0]) <= 100 * SAME_SPARSITY:
                b = ref[r][1]
                out.add(r, x, [y - b, lo - b, hi - b], n)
        return out

    def add(self, rnd: int, x: float, mean_lo_hi: list[float], n: int) -> None:
        self.rounds.append(rnd)
        self.xs.append(x)
        for series, v in zip((self.ys, self.lo, self.hi), mean_lo_hi):
            series.append(v)
        self.n.append(n)


def _accuracies(rows: list) -> list[float]:
    """A round's accuracies over seeds: validated, else (a round none of whose seeds was validated) inner."""
    return [r.val_acc for r in rows if r.val_acc is not None] or \
        [r.inner_test_acc for r in rows if r.inner_test_acc is not None]


def _curve(exp: str, group: str, label: str, runs: list) -> Curve:
    out = Curve((exp, group), label)
    for rnd, rows in sorted(_round_rows(runs).items()):
        accs = _accuracies(rows)
        if accs:
            out.add(rnd, 100 * sum(r.sparsity for r in rows) / len(rows),
                    [100 * sum(accs) / len(accs), 100 * min(accs), 100 * max(accs)], len(accs))
    return out


def curves(views: list[RunView]) -> tuple[list[Curve], list[tuple[str, float]]]:
    """([Curve], [(label, dense accuracy %)]) per experiment and method (and synthetic source), averaged over
    seeds, as the Rounds table groups them; each curve in its :mod:`dpcore.palette` colour."""
    experiments = sorted({v.experiment for v in views})
    many = len(experiments) > 1
    lines, dense = [], []
    for exp in experiments:
        results = [v.results_for_tables() for v in views if v.experiment == exp]
        first = rounds_table(results).rows[:1]
        if first and first[0]["method"] == "dense" and mean(first[0].get("val_acc")) is not None:
            dense.append((f"{exp}/dense" if many else "dense", 100 * mean(first[0]["val_acc"])))
        for group, runs in _group(results).items():
            curve = _curve(exp, group, f"{exp}/{group}" if many else group, runs)
            if curve.xs:
                lines.append(curve)
    palette = colors([palette_label(c.key, many) for c in lines])
    for c in lines:
        c.color = palette[palette_label(c.key, many)]
    return lines, dense


def palette_label(key: tuple[str, str], many: bool) -> str:
    """The label :mod:`dpcore.palette` colours: the group, with its experiment (a shade of the group's hue)
    when several experiments are shown, as :func:`dpcore.summary.label_runs` names them in figures."""
    exp, group = key
    return f"{group} [{exp}]" if many else group


def fit_title(parts: list[str], width: int) -> str:
    """The first part and, in order, each other part that still fits in ``width``: plotext drops a title
    wider than the plot altogether."""
    out = parts[0]
    for part in parts[1:]:
        if len(out) + len(part) <= width - 2:
            out += part
    return out


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
        Binding("b", "pin_baseline", "Pin baseline"),
        Binding("a", "all", "All/none"),
        Binding("e", "export", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_ids: list[str]):
        super().__init__()
        self.run_ids = list(run_ids)
        self.table_index = 0
        self.log_axis = True  # x: weights remaining % on a log scale (the lottery-ticket axis); x toggles
        self.baseline: tuple[str, str] | None = None  # (experiment, group) pinned with b
        self.lines: list[Curve] = []  # the picked runs' curves, as last drawn (before any baseline is taken off)
        self.drawn: list[tuple[str, list[float], list[float]]] = []  # the plot's series: (name, x, y)
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
                yield RowTable(id="compare-table", method_colors=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#pick").border_title = "runs (space toggles)"
        self.query_one("#pick").focus()
        self.call_after_refresh(self.became_ready)

    def views(self) -> list[RunView]:
        views = self.dash.views
        return [views[r] for r in self.run_ids if r in views]

    def baseline_label(self) -> str:
        """The pinned baseline as the legend names it ("" when none)."""
        if self.baseline is None:
            return ""
        many = len({v.experiment for v in self.views()}) > 1
        return f"{self.baseline[0]}/{self.baseline[1]}" if many else self.baseline[1]

    def baseline_shown(self) -> bool:
        return any(c.key == self.baseline for c in self.lines)

    def tables(self) -> list[Table]:
        """Each experiment's tables; with a baseline pinned, those with a validated accuracy per round gain the
        "vs baseline" column (:func:`dpcore.summary.with_baseline`), which every export of them carries."""
        views = self.views()
        experiments = sorted({v.experiment for v in views})
        points = self._baseline_points(views)
        out = []
        for exp in experiments:
            for t in experiment_tables([v.results_for_tables() for v in views if v.experiment == exp]):
                if points:
                    t = with_baseline(t, self.baseline_label(), points)
                if len(experiments) > 1:
                    t.title = f"{exp}: {t.title}"
                out.append(t)
        return out

    def _baseline_points(self, views: list[RunView]) -> dict[int, tuple[float, float]]:
        if self.baseline is None:
            return {}
        exp, group = self.baseline
        return baseline_points([v.results_for_tables() for v in views if v.experiment == exp], group)

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
        self._plot(views)
        self.set_title(self.title_text(views))
        self.query_one("#t2m", Static).update(t2m_summary(views) if views else "pick two or more runs on the left")
        self._show_table()

    def title_text(self, views: list[RunView]) -> Text:
        title = Text.assemble(("Compare", "bold"), f"  {len(views)} runs: "
                              + ", ".join(sorted({f'{v.experiment}' for v in views})) if views else "")
        if self.baseline is not None:
            shown = "" if self.baseline_shown() else ", none of its runs picked"
            title.append(f"  · baseline {self.baseline_label()}{shown} (b unpins)", style="bold")
        return title

    def _plot(self, views: list[RunView]) -> None:
        widget = self.query_one("#acc-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_figure()
        self.drawn = []
        self.lines, dense = curves(views)
        lines = self.lines
        base = next((c for c in lines if c.key == self.baseline), None)
        axis = "weights remaining % (log)" if self.log_axis else "sparsity %"
        # The title, right above the y axis, names it (plotext's y label shares the x label's line and pushes it
        # out on a narrow plot); the x label names the x axis.
        parts = [f"Δ accuracy vs {base.label} (pts)" if base else "validated accuracy %"]
        if any(c.band()[0] for c in lines):
            parts.append("; ···: min–max of seeds")
        if base is not None:  # every line as its difference to the baseline's (the baseline itself at 0)
            lines = [c.minus(base) for c in lines]
        elif dense:
            parts.append("; line: " + ", ".join(f"{label} {y:.2f}%" for label, y in dense))
            for _, y in dense:
                plt.hline(y, "gray")
        plt.title(fit_title(parts, widget.size.width))
        for c in lines:
            self._curve(plt, c, baseline=c.key == self.baseline)
        self._x_axis(plt, lines, axis)
        if not lines:
            plt.title("no finished rounds in the picked runs yet")
        widget.refresh()

    def _curve(self, plt, c: Curve, baseline: bool = False) -> None:
        """The mean line, and its seeds' min–max band where n >= 2. Plotext fills only down to an axis, not
        between two lines (a fill would hide the lines under it), so the band is its two edges as dotted lines
        ("·") in the mean's colour: read as the band's bounds, light beside the solid braille mean."""
        color = rgb(c.color)
        label = f"{c.label} (baseline)" if baseline else c.label
        self._line(plt, label, [self.x_of(x) for x in c.xs], c.ys, color, "braille")
        bx, lo, hi = c.band()
        if bx:
            xs = [self.x_of(x) for x in bx]
            self._line(plt, f"{c.label} min", xs, lo, color, "·", legend=False)
            self._line(plt, f"{c.label} max", xs, hi, color, "·", legend=False)

    def _line(self, plt, name: str, xs: list[float], ys: list[float], color, marker: str, legend: bool = True) -> None:
        plt.plot(xs, ys, label=name if legend else None, color=color, marker=marker)
        self.drawn.append((name, xs, ys))

    def _x_axis(self, plt, lines: list[Curve], axis: str) -> None:
        if lines and self.log_axis:
            ticks = remaining_ticks([x for c in lines for x in c.xs])
            plt.xticks([self.x_of(100 - r) for r in ticks], [f"{r:.3g}" for r in ticks])
            plt.xlim(self.x_of(0.0), self.x_of(100 - ticks[-1]))  # from 100% of the weights to the fewest
        plt.xlabel(axis)

    def x_of(self, sparsity_pct: float) -> float:
        """Where a sparsity goes on the x axis: -log10(weights remaining %) (100% at the left, the sparsest
        masks to the right, each halving of the weights the same width), or the sparsity itself."""
        return -math.log10(max(100.0 - sparsity_pct, 1e-3)) if self.log_axis else sparsity_pct

    def on_resize(self) -> None:
        super().on_resize()
        if self.ready:  # the title is fitted to the plot's width, known once the new layout is done
            self.call_after_refresh(lambda: self._plot(self.views()))

    def action_toggle_axis(self) -> None:
        self.log_axis = not self.log_axis
        self._plot(self.views())

    def action_pin_baseline(self) -> None:
        """Pin the line of the highlighted run (its experiment and method or source) as the baseline; b on a run
        of the pinned line unpins it."""
        pick = self.query_one("#pick", SelectionList)
        if pick.highlighted is None:
            return
        view = self.dash.views.get(pick.get_option_at_index(pick.highlighted).value)
        if view is None:
            return
        key = (view.experiment, view.group)
        if key != self.baseline and all(c.key != key for c in self.lines):
            self.notify(f"{view.label} has no line in the plot: pick it (space) first", severity="warning")
            return
        self.baseline = None if key == self.baseline else key
        self._shown = None  # redraw the same runs against the new baseline
        self.refresh_data()

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
        table_widget.cell_colors = self._cell_colors(t)
        table_widget.show_table(t)

    def _cell_colors(self, table: Table):
        """The table's method cells in their lines' colours (an experiment's shade when several are shown)."""
        lines = self.lines
        exp = table.title.split(": ", 1)[0] if len({c.key[0] for c in lines}) > 1 else None
        by_group = {c.key[1]: c.color for c in lines if exp is None or c.key[0] == exp}

        def color(key: str, value: Any) -> str | None:
            own = cell_color(key, value)  # None: not a cell that names a method
            return own and by_group.get(value if key == "method" else f"distilled {value}", own)
        return color

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
