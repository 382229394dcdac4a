"""Exports of the row model: Rich, CSV, JSON, Markdown, HTML and LaTeX (booktabs) all render the same tables."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table as RichTable

from dpcore.palette import cell_color
from dpcore.store import atomic_write_text
from dpcore.summary import Stat, Table, format_cell

FORMATS = ("csv", "json", "md", "html")  # the dashboard's per-table exports (summary.tex: headless)


def _raw(value: Any) -> Any:
    if isinstance(value, Stat):
        return {"mean": value.mean, "std": value.std, "n": value.n}
    return value


def to_rich(table: Table) -> RichTable:
    cells = [[format_cell(row.get(c.key), c.kind) for c in table.columns] for row in table.rows]
    out = RichTable(title=table.title, caption="\n".join(table.notes) or None, title_justify="left",
                    caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                    collapse_padding=True, show_edge=False)
    for i, col in enumerate(table.columns):
        # Cells never wrap (numbers must stay whole); long headers wrap onto two lines instead.
        widest = max([len(r[i]) for r in cells] + [max(map(len, col.header.split()))])
        out.add_column(col.header, justify="left" if col.kind == "text" else "right", min_width=widest)
    for row in cells:
        out.add_row(*row)
    return out


def to_csv(table: Table) -> str:
    """One column per value; a mean +- std cell becomes two columns, ``<key>_mean`` and ``<key>_std``."""
    stat_keys = {c.key for c in table.columns for r in table.rows if isinstance(r.get(c.key), Stat)}
    header = []
    for c in table.columns:
        header += [f"{c.key}_mean", f"{c.key}_std"] if c.key in stat_keys else [c.key]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        cells = []
        for c in table.columns:
            v = row.get(c.key)
            if c.key in stat_keys:
                cells += ["", ""] if v is None else [repr(v.mean), repr(v.std)]
            else:
                cells.append("" if v is None else (repr(v) if isinstance(v, float) else v))
        writer.writerow(cells)
    return buf.getvalue()


def to_json(tables: list[Table]) -> str:
    return json.dumps([{"title": t.title, "columns": [c.key for c in t.columns], "notes": t.notes,
                        "rows": [{c.key: _raw(r.get(c.key)) for c in t.columns} for r in t.rows]}
                       for t in tables], indent=2) + "\n"


def to_markdown(tables: list[Table]) -> str:
    parts = []
    for t in tables:
        lines = [f"## {t.title}", "", "| " + " | ".join(c.header for c in t.columns) + " |",
                 "|" + "|".join(":---" if c.kind == "text" else "---:" for c in t.columns) + "|"]
        for r in t.rows:
            lines.append("| " + " | ".join(format_cell(r.get(c.key), c.kind) for c in t.columns) + " |")
        lines += [""] + [f"_{n}_" for n in t.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _html_cell(row: dict, col) -> str:
    """One <td>; a cell naming a method in the method's colour (:mod:`dpcore.palette`, as on every figure)."""
    value = row.get(col.key)
    color = cell_color(col.key, value)
    style = f' style="color:{color}"' if color else ""
    return f'<td class="{"t" if col.kind == "text" else "n"}"{style}>{html.escape(format_cell(value, col.kind))}</td>'


def to_html(tables: list[Table], title: str = "dptui results") -> str:
    body = []
    for t in tables:
        head = "".join(f"<th>{html.escape(c.header)}</th>" for c in t.columns)
        rows = "".join("<tr>" + "".join(_html_cell(r, c) for c in t.columns) + "</tr>" for r in t.rows)
        notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in t.notes)
        body.append(f"<h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr></thead>"
                    f"<tbody>{rows}</tbody></table>{notes}")
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em}td.n{text-align:right;font-variant-numeric:tabular-nums}"
             ".note{color:#555;font-size:.9em}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("±", r"$\pm$").replace("→", r"$\to$")


def _best(table: Table, col) -> Any:
    """The row value a column's best cell holds (bold in LaTeX): the highest accuracy or speed-up, the lowest
    time; None where "best" means nothing (text, counts, sparsity, rounds)."""
    if col.kind not in ("pct", "sec", "x") or col.key in ("sparsity", "remaining") or "sparsity" in col.key:
        return None
    if col.kind == "pct" and "acc" not in col.key:
        return None
    means = [(v.mean if isinstance(v, Stat) else v) for v in (r.get(col.key) for r in table.rows)]
    means = [m for m in means if isinstance(m, (int, float))]
    if len(means) < 2:
        return None
    return min(means) if col.kind == "sec" else max(means)


# A method's name is written \dptuimethod{<hex colour>}{<name>}. The default (\providecommand, in the LaTeX kernel)
# prints the name alone, so the file still needs nothing but booktabs; its comment line says how to colour the names.
LATEX_METHOD = (r"% method names in the colours of dpcore/palette.py: put \usepackage{xcolor} and "
                r"\newcommand{\dptuimethod}[2]{\textcolor[HTML]{#1}{#2}} in the preamble" "\n"
                r"\providecommand{\dptuimethod}[2]{#2}")


def _tex_cell(value: Any, col, bold: bool) -> str:
    text = _tex(format_cell(value, col.kind))
    color = cell_color(col.key, value)
    if color:
        return rf"\dptuimethod{{{color.lstrip('#').upper()}}}{{{text}}}"
    return rf"\textbf{{{text}}}" if bold else text


def to_latex(tables: list[Table]) -> str:
    r"""booktabs tables of the same rows and cells (mean $\pm$ std), the best cell of each accuracy, time and
    speed-up column in bold, method names through ``\dptuimethod`` (see :data:`LATEX_METHOD`); needs
    ``\usepackage{booktabs}``. Each table is a ``table`` float with a caption."""
    parts = ["% dptui: tables of the same row model as summary.md; needs \\usepackage{booktabs}", LATEX_METHOD]
    for t in tables:
        spec = "".join("l" if c.kind == "text" else "r" for c in t.columns)
        best = {c.key: _best(t, c) for c in t.columns}
        lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(_tex(c.header) for c in t.columns) + r" \\", r"\midrule"]
        for r in t.rows:
            cells = []
            for c in t.columns:
                v = r.get(c.key)
                mean = v.mean if isinstance(v, Stat) else v
                cells.append(_tex_cell(v, c, best[c.key] is not None and mean == best[c.key]))
            lines.append(" & ".join(cells) + r" \\")
        caption = _tex(t.title + (": " + "; ".join(t.notes) if t.notes else ""))
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def write_exports(tables: list[Table], out_dir: Path, title: str) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for t in tables:
        path = out_dir / f"{t.title.split()[0].lower().replace('-', '')}.csv"
        atomic_write_text(path, to_csv(t))
        written.append(path)
    for name, text in (("summary.json", to_json(tables)), ("summary.md", f"# {title}\n\n" + to_markdown(tables)),
                       ("summary.html", to_html(tables, title)), ("summary.tex", to_latex(tables))):
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    return written
