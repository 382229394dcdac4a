"""The ``dptui`` command line (typer)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dpcore.errors import DataWarning, DPError

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Distilled Pruning: IMP whose inner loop trains on distilled data. "
                       "Without a command, opens the dashboard (or runs headless with --headless).")
err_console = Console(stderr=True, highlight=False)

ProfileOpt = typer.Option("quickstart", "--profile", "-p", help="profile name (see `dptui profiles`) or path to a .toml")
SetOpt = typer.Option(None, "--set", "-s", help="override a setting, e.g. --set train.epochs=5 (repeatable)")
RunsOpt = typer.Option(None, "--runs-dir", envvar="DPTUI_RUNS_DIR", help="run store (default ./runs)")
DataOpt = typer.Option(None, "--data-root", help="folder holding the datasets (default: data.root or ./data)")


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", soft_wrap=True, markup=False)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"warning: {message}", soft_wrap=True, markup=False)


def runs_path(runs_dir: Optional[Path]) -> Path:
    from dpcore.store import default_runs_dir

    return runs_dir or default_runs_dir()


@app.callback(invoke_without_command=True)
def main_command(ctx: typer.Context,
                 headless: bool = typer.Option(False, "--headless", help="run the profile as a batch job, print and export tables"),
                 profile: str = ProfileOpt, overrides: Optional[list[str]] = SetOpt,
                 runs_dir: Optional[Path] = RunsOpt, data_root: Optional[str] = DataOpt,
                 out: Optional[Path] = typer.Option(None, "--out", help="folder for the exported tables (headless)"),
                 run_ids: Optional[list[str]] = typer.Option(None, "--run-id", help="run only these runs of the experiment (repeatable; see `dptui runs`)")) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from dpcore.profiles import load_profile

    cfg, _ = load_profile(profile, overrides or [])
    if headless:
        from .headless import run_headless

        console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        raise typer.Exit(run_headless(cfg, runs_path(runs_dir), data_root, out, console, only=run_ids or None))
    from .app import run_dashboard  # the dashboard, opened on the given profile and run store

    raise typer.Exit(run_dashboard(str(profile), overrides or [], runs_path(runs_dir), data_root))


from .report_cmd import register as _register_report; _register_report(app)  # noqa: E402,E702  report, analyze


@app.command("runs")
def runs_command(runs_dir: Optional[Path] = RunsOpt) -> None:
    """List the runs in the store."""
    from rich.table import Table

    from dpcore.store import list_runs

    root = runs_path(runs_dir)
    runs = list_runs(root)
    table = Table(title=f"runs in {root}", title_justify="left")
    for col in ("run", "experiment", "method", "seed", "dataset/model", "device", "status", "rounds",
                "sparsity %", "best val %", "time-to-mask s"):
        table.add_column(col, no_wrap=True)
    for r in runs:
        rows = r.get("rounds", [])
        last = rows[-1] if rows else {}
        vals = [x["val_acc"] for x in rows if x.get("val_acc") is not None]
        table.add_row(r["run_id"], r.get("experiment", ""), r.get("method", ""), str(r.get("seed", "")),
                      f"{r.get('dataset', '')}/{r.get('model', '')}", r.get("device", ""), r["status"],
                      f"{len(rows)}/{r.get('rounds_planned', '?')}",
                      f"{100 * last['sparsity']:.1f}" if last else "-", f"{100 * max(vals):.2f}" if vals else "-",
                      f"{last['time_to_mask_s']:.1f}" if last else "-")
    Console(highlight=False).print(table if runs else f"no runs in {root}")


@app.command("profiles")
def profiles_command() -> None:
    """List the profiles found by name."""
    from dpcore.profiles import list_profiles, read_toml

    for name, path in list_profiles().items():
        desc = read_toml(path).get("experiment", {}).get("description", "")
        Console(highlight=False).print(f"[bold]{name}[/]  {desc}  [dim]{path}[/]")


from .distill_cmd import register as _register_distill; _register_distill(app)  # noqa: E402, E702


def main() -> None:
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DataWarning)
    try:
        app()  # standalone: usage errors exit 2, --help and typer.Exit handled by typer
    except DPError as err:
        err_console.print(f"error: {err}", soft_wrap=True, markup=False)
        sys.exit(2)
