"""The ``dptui`` command line (typer)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dpcore.errors import DataWarning, DPError

from . import distill_cmd, report_cmd
from .options import DataOpt, ProfileOpt, RunsOpt, SetOpt, runs_path

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Distilled Pruning: IMP whose inner loop trains on distilled data. "
                       "Without a command, opens the dashboard (or runs headless with --headless).")
err_console = Console(stderr=True, highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"warning: {message}", soft_wrap=True, markup=False)


@app.callback(invoke_without_command=True)
def main_command(ctx: typer.Context,
                 headless: bool = typer.Option(False, "--headless",
                                               help="run the profile as a batch job, print and export tables"),
                 profile: str = ProfileOpt, overrides: Optional[list[str]] = SetOpt,
                 runs_dir: Optional[Path] = RunsOpt, data_root: Optional[str] = DataOpt,
                 out: Optional[Path] = typer.Option(None, "--out", help="folder for the exported tables (headless)"),
                 run_ids: Optional[list[str]] = typer.Option(
                     None, "--run-id", help="run only these runs of the experiment (repeatable; see `dptui runs`)"),
                 dry_run: bool = typer.Option(False, "--dry-run",
                                              help="plan and check the experiment and estimate each run's wall time "
                                                   "and the experiment's (headless); run nothing"),
                 jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=0,
                                                    help="runs at once on this machine, each in its own process "
                                                         "(sets run.jobs; 0 = auto)"),
                 executor: Optional[str] = typer.Option(None, "--executor",
                                                        help="local or ray (sets run.executor)"),
                 ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                                           help="Ray cluster address (sets run.ray_address; "
                                                                "default $RAY_ADDRESS, else a local instance)")) -> None:
    if ctx.invoked_subcommand is not None:
        return
    import json

    from dpcore.profiles import load_profile

    extra = [f"run.executor={json.dumps(executor)}"] if executor is not None else []
    extra += [f"run.jobs={jobs}"] if jobs is not None else []
    extra += [f"run.ray_address={json.dumps(ray_address)}"] if ray_address is not None else []
    cfg, _ = load_profile(profile, [*(overrides or []), *extra])
    if headless:
        from .headless import run_headless

        console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        raise typer.Exit(run_headless(cfg, runs_path(runs_dir), data_root, out, console, only=run_ids or None,
                                      dry_run=dry_run))
    from .app import run_dashboard  # the dashboard, opened on the given profile and run store

    raise typer.Exit(run_dashboard(str(profile), overrides or [], runs_path(runs_dir), data_root))


@app.command("runs")
def runs_command(runs_dir: Optional[Path] = RunsOpt) -> None:
    """List the runs in the store (the dashboard's Runs table)."""
    from dpcore.store import list_runs

    from .app.model import build_view, runs_listing
    from .export import to_rich

    root = runs_path(runs_dir)
    runs = list_runs(root)
    views = sorted((build_view(r["run_id"], r, None, None) for r in runs), key=lambda v: v.sort_key())
    table = runs_listing(views, title=f"runs in {root}")
    Console(highlight=False).print(to_rich(table) if runs else f"no runs in {root}")


@app.command("profiles")
def profiles_command() -> None:
    """List the profiles found by name."""
    from dpcore.profiles import list_profiles, read_toml

    for name, path in list_profiles().items():
        desc = read_toml(path).get("experiment", {}).get("description", "")
        Console(highlight=False).print(f"[bold]{name}[/]  {desc}  [dim]{path}[/]")


@app.command("cluster")
def cluster_command(ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                                              help="Ray cluster address (default $RAY_ADDRESS, else "
                                                                   "the cluster `ray start` runs on this machine)"),
                    as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Show a Ray cluster's nodes and free CPUs/GPUs (what `--executor ray` would run on)."""
    import json
    import os

    from dpcore.executors.ray import cluster_status

    address = ray_address or os.environ.get("RAY_ADDRESS") or "auto"
    status = cluster_status(address)
    if as_json:
        print(json.dumps({"address": status.address, "line": status.line(), "free_cpus": status.free_cpus,
                          "free_gpus": status.free_gpus,
                          "nodes": [{"node_id": n.node_id, "address": n.address, "alive": n.alive, "cpus": n.cpus,
                                     "gpus": n.gpus} for n in status.nodes]}))
        return
    from rich.table import Table

    table = Table(title=f"Ray cluster {status.address}: {status.line()}")
    for col in ("node", "address", "alive", "CPUs", "GPUs"):
        table.add_column(col)
    for n in status.nodes:
        table.add_row(n.node_id[:8], n.address, "yes" if n.alive else "no", f"{n.cpus:g}", f"{n.gpus:g}")
    Console(highlight=False).print(table)


report_cmd.register(app)  # report, analyze
distill_cmd.register(app)


def main() -> None:
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DataWarning)
    try:
        app()  # standalone: usage errors exit 2, --help and typer.Exit handled by typer
    except DPError as err:
        err_console.print(f"error: {err}", soft_wrap=True, markup=False)
        sys.exit(2)
