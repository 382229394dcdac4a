"""``dptui report`` (one Markdown + HTML page of tables and figures over several runs) and
``dptui analyze`` (the instability / weight analyses on a run that already has its rounds)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dpcore.errors import ConfigError
from dpcore.results import RunResults

from .interrupt import catch_ctrl_c

FIGURES_OF = {"Rounds": ("accuracy_vs_sparsity", "time_to_mask"), "Instability": ("interpolation",),
              "Layer sparsity": ("layer_sparsity",), "Initial weights of survivors": ("weight_histograms",),
              "Hessian and landscape": ("landscape",), "Mask overlap": ("mask_overlap",)}


def parse_ints(option: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be comma-separated whole numbers, e.g. {option} 3,5") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{option} {text!r} must not be negative")
    return values


# -- report ------------------------------------------------------------------------------------------

def _html_tables(tables) -> str:
    from .export import to_html

    doc = to_html(tables)
    return doc.split("</h1>", 1)[1].rsplit("</body>", 1)[0]


def _runs_line(res: RunResults) -> str:
    last = f", {len(res.rounds)} rounds to {100 * res.last.sparsity:.1f}% sparsity" if res.last else ""
    return (f"{res.label} seed {res.seed} ({res.experiment}: {res.dataset}/{res.model} on {res.device}, "
            f"rewind k={res.rewind.k if res.rewind else 0}{last}, {res.status}) — run {res.run_id}")


def write_report(runs, out: Path, title: str) -> list[Path]:
    """``runs``: :func:`dpcore.analysis.aggregate.load_runs`'s (results, run directory) pairs."""
    from dpcore.analysis.aggregate import as_loaded, mask_overlaps, report_tables
    from dpcore.analysis.figures import overlap_figure, write_figures
    from dpcore.store import atomic_write_text
    from dpcore.summary import METHOD_ORDER, label_runs

    from .export import to_html, to_markdown

    runs = as_loaded(runs)
    tables = report_tables(runs)
    figures = {f.name: f for f in write_figures([res for res, _ in runs], out / "figures")}
    overlap = overlap_figure(mask_overlaps(runs), out / "figures")
    if overlap is not None:
        figures[overlap.name] = overlap
    labelled = sorted(label_runs([res for res, _ in runs]), key=lambda r: (METHOD_ORDER.get(r.method, 9), r.label, r.seed))
    intro = ["Runs compared (mean ± std over seeds in every table; the best seed is marked in the Seeds table "
             "and drawn bold in the figures):"] + [f"- {_runs_line(r)}" for r in labelled]
    md, body = [f"# {title}", "", *intro, ""], [f"<p>{html.escape(intro[0])}</p><ul>"
                                               + "".join(f"<li>{html.escape(_runs_line(r))}</li>" for r in labelled)
                                               + "</ul>"]
    for t in tables:
        md.append(to_markdown([t]))
        body.append(_html_tables([t]))
        for name in FIGURES_OF.get(t.title, ()):
            fig = figures.get(name)
            if fig is None:
                continue
            png, svg = (f"figures/{p.name}" for p in fig.paths)
            md += [f"![{fig.name}]({png})", "", f"_Figure: {fig.caption} ([SVG]({svg}))_", ""]
            body.append(f'<figure><img src="{svg}" alt="{fig.name}" style="max-width:100%">'
                        f"<figcaption>{html.escape(fig.caption)} (<a href=\"{png}\">PNG</a>)</figcaption></figure>")
    doc = f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
    style = to_html([]).split("<style>", 1)[1].split("</style>", 1)[0]  # the exports' own table style
    style += "figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em;max-width:60em}"
    doc += f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", doc)
    return [out / "report.md", out / "report.html", *(p for f in figures.values() for p in f.paths)]


def report_command(run_dirs: list[Path] = typer.Argument(..., help="run directories (or run stores) to compare"),
                   out: Path = typer.Option(..., "--out", help="folder for report.md, report.html and figures/"),
                   title: Optional[str] = typer.Option(None, "--title", help="the report's heading")) -> None:
    """Write one report (Markdown + HTML: tables and PNG/SVG figures) comparing the given runs."""
    from dpcore.analysis.aggregate import load_runs

    runs = load_runs(run_dirs)
    exps = sorted({res.experiment for res, _ in runs})
    written = write_report(runs, out, title or f"dptui report: {', '.join(exps)}")
    Console(highlight=False).print(f"report: {out}/report.md, {out}/report.html "
                                   f"({len(written) - 2} figure files in {out}/figures)")


# -- analyze -----------------------------------------------------------------------------------------

def analyze_command(run_dir: Path = typer.Argument(..., help="the run's directory (<runs>/<run id>)"),
                    rounds: str = typer.Option("", "--rounds",
                                               help="rounds whose masks get the instability analysis, e.g. 3,5 (0 = dense)"),
                    alphas: int = typer.Option(11, "--alphas", help="interpolation points from 0 to 1"),
                    rewinds: str = typer.Option("", "--rewinds", help="rewind points k, e.g. 0,1 (default: the run's own)"),
                    bn_recompute: bool = typer.Option(False, "--bn-recompute",
                                                      help="recompute BatchNorm statistics at each alpha"),
                    histograms: str = typer.Option("", "--histograms",
                                                   help="rounds whose surviving initial weights are histogrammed"),
                    figures: bool = typer.Option(True, "--figures/--no-figures", help="(re)write <run>/figures"),
                    data_root: Optional[str] = typer.Option(None, "--data-root", help="folder holding the datasets"),
                    device: Optional[str] = typer.Option(None, "--device", help="override the run's device (cpu, cuda)")) -> None:
    """Run the instability analysis / weight histograms on an existing run; results go into its results.json."""
    from dpcore.events import AnalysisDone, fan_out
    from dpcore.experiment import Experiment
    from dpcore.summary import instability_table

    from .export import to_rich
    from .headless import LiveDisplay

    analysis = {"instability_rounds": parse_ints("--rounds", rounds), "instability_rewinds": parse_ints("--rewinds", rewinds),
                "alphas": alphas, "bn_recompute": bn_recompute, "histogram_rounds": parse_ints("--histograms", histograms),
                "figures": figures}
    exp = Experiment.of_run(run_dir, analysis=analysis, device=device, data_root=data_root)
    (plan,) = exp.plans
    console = Console(highlight=False)
    display = LiveDisplay(console, 1)
    display.label = f"{plan.label} seed {plan.seed}"

    def on_done(ev) -> None:
        if isinstance(ev, AnalysisDone) and ev.analysis == "instability":
            r = ev.result
            console.print(f"  round {ev.round} ({100 * r['sparsity']:.1f}% sparse), rewind k={r['rewind']['k']}: "
                          f"instability {100 * r['instability']:.2f} pp, end accs "
                          + "/".join(f"{100 * a:.2f}%" for a in r["end_acc"]))

    exp.check()
    stop, restore_sigint = catch_ctrl_c(console)
    from dpcore.training import Stopped

    try:
        with display.progress:
            results = exp.analyze(sink=fan_out(display, on_done), should_stop=stop.is_set)
    except Stopped:
        console.print("stopped; finished analyses are saved, rerun to do the rest")
        raise typer.Exit(130)
    finally:
        restore_sigint()
    table = instability_table([results])
    if table.rows:
        console.print(to_rich(table))
    if results.figures:
        console.print(f"figures: {run_dir}/figures/")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("analyze")(analyze_command)
