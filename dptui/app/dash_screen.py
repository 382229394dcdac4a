"""What every screen of the dashboard shares: :class:`DashScreen` (title line, export, redraws) and the
footer's first key."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Static

from dpcore.summary import Table

if TYPE_CHECKING:  # app.py imports the screens
    from .app import DashboardApp

KEYS = Binding("f1", "app.toggle_keys", "Keys")  # first in every screen's footer, so it shows even at 80x24


class DashScreen(Screen):
    """Common to all screens: a title line, the footer, export."""

    ready = False  # set once mounted: the app refreshes only ready screens
    shown_version = -1  # the app's data_version this screen last drew

    @property
    def dash(self) -> DashboardApp:
        """The dashboard app, typed (``self.app`` is typed as a plain Textual :class:`~textual.app.App`)."""
        return cast("DashboardApp", self.app)

    @property
    def up_to_date(self) -> bool:
        """Mounted, and showing the store as the app knows it now (no refresh owed)."""
        return self.ready and self.shown_version == self.dash.data_version

    def title_line(self) -> Horizontal:
        """The screen's title at the left and the machine's load at the right (refreshed every few seconds)."""
        return Horizontal(Static("", id="title", classes="title"), Static("", id="load", classes="load"),
                          classes="title-bar")

    _title_len = 0

    def show_load(self) -> None:
        """Put the app's latest load line into this screen's header, as much of it as fits beside the title
        (its parts, ``cpu · mem · gpu0 ...``, dropped from the right): the title is never cut for it."""
        room = self.size.width - self._title_len - 4
        parts = self.dash.load_text.split(" · ") if self.dash.load_text else []
        while parts and len(" · ".join(parts)) > room:
            parts.pop()
        for widget in self.query("#load"):
            widget.update(" · ".join(parts))
            widget.display = bool(parts)  # no room: the title keeps the whole line

    def on_resize(self) -> None:
        self.show_load()

    def set_title(self, text: str | Text) -> None:
        self.query_one("#title", Static).update(text)
        self._title_len = len(text.plain if isinstance(text, Text) else text)
        self.show_load()

    def export_name(self) -> str:
        return "table"

    def current_table(self) -> Table | None:
        return None

    def action_export(self) -> None:
        self.dash.ask_export(self.export_name(), self.current_table())

    def became_ready(self) -> None:
        """First refresh, once every widget of the screen is mounted."""
        self.ready = True
        self.show_load()
        self.redraw()

    def on_screen_resume(self) -> None:
        if self.ready:
            self.show_load()
            self.redraw()

    def redraw(self) -> None:
        """Show the app's current data (and remember which version that was)."""
        version = self.dash.data_version
        self.refresh_data()
        self.shown_version = version

    def refresh_data(self) -> None:
        pass
