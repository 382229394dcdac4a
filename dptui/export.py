"""Exports of the row model: Rich, CSV, JSON, Markdown and HTML all render the same tables."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table as RichTable

from dpcore.store import atomic_write_text
from dpcore.summary import Stat, Table, format_cell

FORMATS = ("csv", "json", "md", "html")


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


def to_html(tables: list[Table], title: str = "dptui results") -> str:
    body = []
    for t in tables:
        head = "".join(f"<th>{html.escape(c.header)}</th>" for c in t.columns)
        rows = "".join("<tr>" + "".join(
            f'<td class="{"t" if c.kind == "text" else "n"}">{html.escape(format_cell(r.get(c.key), c.kind))}</td>'
            for c in t.columns) + "</tr>" for r in t.rows)
        notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in t.notes)
        body.append(f"<h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr></thead>"
                    f"<tbody>{rows}</tbody></table>{notes}")
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em}td.n{text-align:right;font-variant-numeric:tabular-nums}"
             ".note{color:#555;font-size:.9em}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


def write_exports(tables: list[Table], out_dir: Path, title: str) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for t in tables:
        path = out_dir / f"{t.title.split()[0].lower().replace('-', '')}.csv"
        atomic_write_text(path, to_csv(t))
        written.append(path)
    for name, text in (("summary.json", to_json(tables)), ("summary.md", f"# {title}\n\n" + to_markdown(tables)),
                       ("summary.html", to_html(tables, title))):
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    return written
