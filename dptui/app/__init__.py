"""The dashboard: a Textual app to launch, watch and compare runs.

Only :mod:`.app` and the screens import Textual; :mod:`.model` and :mod:`.follow` are plain Python. The
launch queue the app starts runs through (the launcher and the detached queue runner) is :mod:`dptui.launches`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_app(runs_dir: str | Path, **kwargs: Any):
    """The dashboard app for ``runs_dir`` (see :class:`dptui.app.app.DashboardApp` for the options)."""
    from .app import DashboardApp

    return DashboardApp(Path(runs_dir), **kwargs)


def run_dashboard(profile: str, overrides: list[str], runs_dir: Path, data_root: str | None) -> int:
    """``dptui``: open the app; returns the exit code."""
    app = make_app(runs_dir, profile=profile, overrides=overrides, data_root=data_root)
    app.run()
    active = app.active_run_count()
    if active:
        print(f"{active} run(s) still running or queued in the background; run `dptui` again to watch them.")
    return app.return_code or 0
