"""Widgets and modals shared by the screens."""

from __future__ import annotations

from typing import Any, Iterable

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from dpcore.palette import cell_color
from dpcore.results import RoundRow
from dpcore.summary import Table, format_cell

STATUS_STYLE = {"done": "green", "running": "bold cyan", "queued": "magenta", "pending": "magenta",
                "stopping": "yellow", "stopped": "yellow", "failed": "bold red", "interrupted": "red",
                "stalled": "red", "cancelled": "dim"}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def cell(value: Any, kind: str, key: str = "", color: str | None = None) -> Text:
    """A row-model value as the exports show it (:func:`dpcore.summary.format_cell`), styled (``color``: the
    method's, for a cell that names one)."""
    text = format_cell(value, kind)
    if key == "status":
        return status_text(text)
    return Text(text, style=color or "", justify="left" if kind == "text" else "right")


def table_rows(table: Table, key_of=None, colors=None) -> list[tuple[str, list[Text]]]:
    """``colors``: None (plain cells) or a function (column key, value) -> the colour of a cell naming a method."""
    return [(str(key_of(row) if key_of else i),
             [cell(row.get(c.key), c.kind, c.key, colors(c.key, row.get(c.key)) if colors else None)
              for c in table.columns])
            for i, row in enumerate(table.rows)]


def pad(value: Any, width: int) -> Any:
    """Right-justified text padded by hand: a DataTable column of fixed width ignores ``justify``."""
    if isinstance(value, Text) and value.justify == "right" and value.cell_len < width:
        return Text(" " * (width - value.cell_len), end="") + value
    return value


class RowTable(DataTable):
    """A DataTable fed whole tables; updates cells in place when the rows are the same, keeps the cursor
    on the same row key otherwise. ``method_colors``: a cell naming a method in its colour
    (:func:`dpcore.palette.cell_color`, or the screen's own ``cell_colors``, e.g. a plot's legend)."""

    def __init__(self, method_colors: bool = False, **kwargs: Any):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.cell_colors = cell_color if method_colors else None
        self._cols: tuple = ()
        self._keys: list[str] = []
        self._cells: dict[str, list] = {}

    @property
    def current_key(self) -> str | None:
        if 0 <= self.cursor_row < len(self._keys):
            return self._keys[self.cursor_row]
        return None

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def show_table(self, table: Table, key_of=None, first: tuple[str, str] | None = None,
                   first_cells: dict[str, Any] | None = None) -> None:
        cols = [(c.key, c.header) for c in table.columns]
        rows = table_rows(table, key_of, self.cell_colors)
        if first is not None:
            cols = [first] + cols
            rows = [(k, [(first_cells or {}).get(k, "")] + cells) for k, cells in rows]
        self.set_data(cols, rows)

    def set_data(self, columns: Iterable[tuple[str, str]], rows: list[tuple[str, list]]) -> None:
        columns = list(columns)
        # Explicit widths (header or widest cell): auto widths can lag behind cells updated between renders.
        widths = [max([cell_len(label)] + [cell_len(r[1][i].plain if isinstance(r[1][i], Text) else str(r[1][i]))
                                            for r in rows]) for i, (_, label) in enumerate(columns)]
        cols = tuple((key, label, w) for (key, label), w in zip(columns, widths))
        rows = [(k, [pad(c, w) for c, w in zip(cells, widths)]) for k, cells in rows]
        if cols != self._cols:
            selected, row = self.current_key, self.cursor_row
            self.clear(columns=True)
            for key, label, w in cols:
                self.add_column(label, key=key, width=w)
            self._cols, self._keys, self._cells = cols, [], {}
        else:
            selected, row = self.current_key, self.cursor_row
        keys = [k for k, _ in rows]
        if keys == self._keys:
            for k, cells in rows:
                old = self._cells.get(k, [])
                for i, ((ck, _, _), new) in enumerate(zip(cols, cells)):
                    if i >= len(old) or old[i] != new:
                        self.update_cell(k, ck, new)
                self._cells[k] = cells
            return
        self.clear()
        for k, cells in rows:
            self.add_row(*cells, key=k)
        self._keys, self._cells = keys, dict(rows)
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)
        elif keys:
            self.move_cursor(row=min(max(row, 0), len(keys) - 1), animate=False)


class FormInput(Input):
    """An Input whose cursor blinks only if the app wants blinking (off for snapshots)."""

    def on_mount(self) -> None:
        self.cursor_blink = getattr(self.app, "blink", True)


class ExportModal(ModalScreen[str | None]):
    """Pick an export format with one key."""

    BINDINGS = [Binding("c", "pick('csv')", "CSV"), Binding("m", "pick('md')", "Markdown"),
                Binding("h", "pick('html')", "HTML"), Binding("j", "pick('json')", "JSON"),
                Binding("s", "pick('svg')", "SVG"), Binding("escape", "pick('')", "Cancel")]

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Export {self.what}", classes="dialog-title", markup=False)
            yield Static("[b]c[/] CSV   [b]m[/] Markdown   [b]h[/] HTML   [b]j[/] JSON   [b]s[/] SVG (screenshot)\n"
                         "[dim]esc cancel[/]")

    def action_pick(self, fmt: str) -> None:
        self.dismiss(fmt or None)


class ConfirmModal(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-title", markup=False)
            yield Static("[b]y[/] yes   [b]n[/] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NameModal(ModalScreen[str | None]):
    """Ask for a name (e.g. of a new preset)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", check=None):
        super().__init__()
        self.title_text, self.value, self.check = title, value, check

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield FormInput(self.value, id="name")
            yield Static("", id="name-error", classes="error")
            yield Static("[b]enter[/] save   [b]esc[/] cancel")

    def on_input_changed(self, event: Input.Changed) -> None:
        problem = self.check(event.value) if self.check else None
        self.query_one("#name-error", Static).update(problem or "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.check and self.check(event.value):
            return
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TimeBars(Static):
    """Per-round horizontal bars: inner training time (synthetic for distilled) vs real training time."""

    def show(self, rows: list[RoundRow], method: str, width: int | None = None) -> None:
        inner_name = {"distilled": "syn", "imp": "real", "random": "none", "snip": "none", "grasp": "none",
                      "synflow": "none"}.get(method, "inner")
        if not rows:
            self.update(Text("no finished rounds yet", style="dim"))
            return
        width = max(6, (width or self.size.width or 40) - 30)
        top = max([r.inner_train_s or 0 for r in rows] + [r.val_train_s or 0 for r in rows] + [1e-9])
        out = Text()
        for r in rows:
            for i, (label, v, style) in enumerate(((inner_name, r.inner_train_s, "cyan"), ("val", r.val_train_s, "magenta"))):
                n = 0 if not v else max(1, round(width * v / top))
                head = f"r{r.round:<3}" if i == 0 else "    "
                out.append(f"{head}{label:>4} ")
                out.append("█" * n, style=style)
                out.append(f" {format_cell(v, 'sec')}s\n" if v is not None else " -\n", style="dim" if v is None else "")
        out.rstrip()
        self.update(out)
