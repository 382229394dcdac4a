"""Runs: every run in the store, live, sortable and filterable."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input, Static

from dpcore.summary import Table

from .dash_screen import KEYS, DashScreen
from .model import RUN_COLUMNS, RunView, experiments_left, runs_listing
from .widgets import FormInput, RowTable

SORT_KEYS = [None] + [c.key for c in RUN_COLUMNS]


class RunsScreen(DashScreen):
    BINDINGS = [
        KEYS,
        Binding("enter", "open", "Open", priority=True),
        Binding("m", "mark", "Mark"),
        Binding("l", "launch", "Launch"),
        Binding("p", "compare", "Compare"),
        Binding("i", "interpolation", "Interpolation", show=False),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "resume", "Resume"),
        Binding("slash", "filter", "Find"),
        Binding("s", "sort", "Sort", key_display="s/S"),
        Binding("S", "reverse", "Reverse sort", show=False),
        Binding("e", "export", "Export"),
        Binding("escape", "clear_filter", "Clear", show=False),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.marked: set[str] = set()
        self.sort_key: str | None = None
        self.reverse = False
        self.filter_text = ""
        self.shown: list[RunView] = []
        self.pending_select: str | None = None  # a just-launched run to put the cursor on once it shows

    def compose(self) -> ComposeResult:
        yield self.title_line()
        yield RowTable(id="runs", method_colors=True)
        yield Static("", id="empty", classes="empty")
        yield FormInput(placeholder="filter: words that must all appear in a row (esc clears)", id="filter")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#filter").display = False
        self.query_one("#runs").focus()
        self.call_after_refresh(self.became_ready)

    # -- data ------------------------------------------------------------------------------------
    def visible_views(self) -> list[RunView]:
        views = self.dash.sorted_views()
        words = self.filter_text.lower().split()
        if words:
            table = runs_listing(views)
            views = [v for v, row in zip(views, table.rows)
                     if all(w in " ".join(str(x) for x in row.values() if x is not None).lower() for w in words)]
        if self.sort_key:
            table = runs_listing(views)
            vals = {v.run_id: row[self.sort_key] for v, row in zip(views, table.rows)}

            def key(v: RunView) -> tuple:
                x = vals[v.run_id]
                if x is None or x == "":
                    return (1, 0, "")
                return (0, x, "") if isinstance(x, (int, float)) else (0, 0, str(x).lower())
            views = sorted(views, key=key, reverse=self.reverse)
            if self.reverse:  # keep empty cells last
                views = [v for v in views if key(v)[0] == 0] + [v for v in views if key(v)[0] == 1]
        elif self.reverse:
            views = views[::-1]
        return views

    def current_table(self) -> Table:
        return runs_listing(self.shown, "Runs")

    def export_name(self) -> str:
        return "runs"

    def refresh_data(self) -> None:
        app = self.dash
        self.shown = self.visible_views()
        table = runs_listing(self.shown)
        for col in table.columns:
            if col.key == self.sort_key:
                col_index = table.columns.index(col)
                table.columns[col_index] = type(col)(col.key, col.header + (" ▼" if self.reverse else " ▲"), col.kind)
        marks = {v.run_id: Text("●", style="bold yellow") if v.run_id in self.marked else Text(" ") for v in self.shown}
        self.query_one(RowTable).show_table(table, key_of=lambda row: row["run_id"], first=("mark", " "),
                                            first_cells=marks)
        if self.pending_select in self.query_one(RowTable).keys:
            self.select(self.pending_select)
            self.pending_select = None
        views = list(app.views.values())
        counts = {s: sum(1 for v in views if v.status == s) for s in ("running", "queued", "failed")}
        parts = [f"{len(views)} runs"] + [f"{n} {s}" for s, n in counts.items() if n]
        parts += [left.text() for left in experiments_left(self.dash.sorted_views())]
        if self.filter_text:
            parts.append(f"filter '{self.filter_text}': {len(self.shown)} shown")
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        self.set_title(Text.assemble(("Runs", "bold"), "  " + " · ".join(parts), (f"  ·  {app.runs_dir_display}", "dim")))
        empty = self.query_one("#empty", Static)
        empty.display = not self.shown and app.loaded
        table = self.query_one(RowTable)
        table.display = not empty.display
        if table.display and self.focused is None:
            table.focus()
        if not views:
            empty.update(f"No runs in {app.runs_dir_display} yet.\nPress l to launch a profile.")
        else:
            empty.update("No run matches the filter (esc clears it).")

    # -- selection -------------------------------------------------------------------------------
    @property
    def selected(self) -> str | None:
        return self.query_one(RowTable).current_key

    def select(self, run_id: str) -> None:
        table = self.query_one(RowTable)
        if run_id in table.keys:
            table.move_cursor(row=table.keys.index(run_id), animate=False)

    # -- actions ---------------------------------------------------------------------------------
    def action_open(self) -> None:
        if self.focused is self.query_one("#filter"):
            self.query_one(RowTable).focus()
        elif self.selected:
            self.dash.open_detail(self.selected)

    def action_mark(self) -> None:
        if self.selected:
            self.marked ^= {self.selected}
            self.refresh_data()

    def action_launch(self) -> None:
        self.dash.open_launch()

    def action_compare(self) -> None:
        marked = [r for r in self.marked if r in self.dash.views]
        if marked:
            self.dash.open_compare(sorted(marked, key=lambda r: self.dash.views[r].sort_key()))
        elif self.selected:
            self.dash.open_compare(self.dash.experiment_of(self.selected))

    def action_interpolation(self) -> None:
        self.dash.open_interpolation(self.selected)

    def action_cancel(self) -> None:
        if self.selected:
            self.dash.cancel_run(self.selected)

    def action_resume(self) -> None:
        if self.selected:
            self.dash.resume_run(self.selected)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.refresh_data()
        self.query_one(RowTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value.strip()
            self.refresh_data()

    def action_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.refresh_data()  # the sorted column's header shows ▲ (▼ reversed)

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.refresh_data()
