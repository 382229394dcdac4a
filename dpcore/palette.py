"""One colour per method and synthetic source, the same in every figure, dashboard screen and export.

A method has its own hue (imp blue, distilled red, random grey, ...). A line that qualifies a method keeps
its hue in another shade, picked from the qualifier itself, so the same label gets the same colour
wherever it is drawn: a distilled source's distiller picks a red-family hue (dm red, mtt crimson, gm
pink, random-subset brown) and its images per class the lightness (fewer images darker); any other
qualifier (a rewind point "k=1", an experiment "[cifar]", a named source) picks one of :data:`SHADES`
by a stable hash of its text. Two labels of one view whose colours still coincide are told apart by
:func:`colors`, which steps the later one (in sorted order) to the next shade.
"""

from __future__ import annotations

import colorsys
import math
import re
import zlib

METHOD_COLORS = {"imp": "#1f77b4", "distilled": "#d62728", "random": "#7f7f7f", "snip": "#2ca02c",
                 "grasp": "#ff7f0e", "synflow": "#9467bd"}
# Distillers (dpcore.synthetic): red-family hues, so a distilled source still reads as "distilled".
SOURCE_COLORS = {"dm": "#d62728", "mtt": "#c51b7d", "gm": "#ce6dbd", "random-subset": "#8c564b", "el2n": "#fb9a99"}
OTHER_COLORS = ("#17becf", "#bcbd22", "#e377c2")  # a method without its own colour (none of the hues above)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]  # figures' layers
# Lightness steps (HLS) of one hue, more of them lighter: a dark shade would vanish on a dark terminal.
SHADES = (0.0, 0.12, -0.1, 0.22, 0.06, -0.05, 0.17, 0.3)
LIGHTNESS = (0.28, 0.82)  # every shade stays readable on dark and light backgrounds
IPC_STEP = 0.12  # lightness per decade of images per class around ipc10 (ipc1 darker, ipc50/100 lighter)


def _stable(text: str) -> int:
    """A hash that is the same in every process (``hash()`` of a str is salted per process)."""
    return zlib.crc32(text.encode())


def lighten(color: str, by: float) -> str:
    """``color`` with its HLS lightness moved by ``by`` (kept inside :data:`LIGHTNESS`)."""
    if not by:
        return color
    h, lum, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb(color)))
    r, g, b = colorsys.hls_to_rgb(h, min(LIGHTNESS[1], max(LIGHTNESS[0], lum + by)), s)
    return "#" + "".join(f"{round(255 * c):02x}" for c in (r, g, b))


def rgb(color: str) -> tuple[int, int, int]:
    """``"#d62728"`` -> ``(214, 39, 40)`` (plotext takes colours as RGB tuples)."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _source(qualifier: str) -> tuple[str, str]:
    """A distilled source's colour and what is left of its label ("dm ipc50" -> a lighter dm red, "")."""
    name = next((n for n in sorted(SOURCE_COLORS, key=len, reverse=True) if qualifier.startswith(n)), None)
    if name is None:  # a distiller without a hue of its own (a set read from a path): a shade of the distilled red
        name = qualifier.split()[0]
        color = lighten(METHOD_COLORS["distilled"], SHADES[1 + _stable(name) % (len(SHADES) - 1)])
    else:
        color = SOURCE_COLORS[name]
    rest = qualifier[len(name):]
    ipc = re.search(r"ipc(\d+)", rest)
    if ipc:
        decades = max(-1.0, min(1.0, math.log10(max(int(ipc.group(1)), 1)) - 1.0))
        color = lighten(color, IPC_STEP * decades)
        rest = rest[:ipc.start()] + rest[ipc.end():]
    return color, rest.strip(" -_")


def color_of(label: str, shade: int = 0) -> str:
    """The colour of a table label (:attr:`dpcore.results.RunResults.label`): its method's, in the shade its
    qualifier picks; ``shade`` steps further (how :func:`colors` separates two equal colours)."""
    method, _, qualifier = label.partition(" ")
    color = METHOD_COLORS.get(method) or OTHER_COLORS[_stable(method) % len(OTHER_COLORS)]
    if method == "distilled" and qualifier and not qualifier.startswith(("k=", "[")):
        color, qualifier = _source(qualifier)
    step = (_stable(qualifier) if qualifier.strip() else 0) + shade
    return lighten(color, SHADES[step % len(SHADES)]) if step % len(SHADES) else color


def colors(labels: list[str]) -> dict[str, str]:
    """:func:`color_of` for each label of one view, a label whose colour another already has stepped to the
    next shade (labels taken in sorted order, so the result does not depend on the order they come in)."""
    out: dict[str, str] = {}
    for label in sorted(set(labels)):
        shade = 0
        while color_of(label, shade) in out.values() and shade < len(SHADES):
            shade += 1
        out[label] = color_of(label, shade)
    return {label: out[label] for label in labels}


LABEL_COLUMNS = {"method": "{}", "distiller": "distilled {}"}  # table columns that name a method or a source


def cell_color(key: str, value: object) -> str | None:
    """The colour of a table cell that names a method (``method`` column) or a distilled source (``distiller``);
    None for any other cell and for the dense row (the reference every method is read against)."""
    template = LABEL_COLUMNS.get(key)
    if template is None or not isinstance(value, str) or not value or value == "dense":
        return None
    return color_of(template.format(value))
