"""Command-line options shared by the ``dptui`` commands (the main command, ``distill``, ``report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ProfileOpt = typer.Option("quickstart", "--profile", "-p", help="profile name (see `dptui profiles`) or path to a .toml")
SetOpt = typer.Option(None, "--set", "-s", help="override a setting, e.g. --set train.epochs=5 (repeatable)")
RunsOpt = typer.Option(None, "--runs-dir", envvar="DPTUI_RUNS_DIR", help="run store (default ./runs)")
DataOpt = typer.Option(None, "--data-root", help="folder holding the datasets (default: data.root or ./data)")


def runs_path(runs_dir: Optional[Path]) -> Path:
    from dpcore.store import default_runs_dir

    return runs_dir or default_runs_dir()
