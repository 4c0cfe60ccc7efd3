"""Reports in a notebook: an inline HTML fragment that leaves the page's style alone, and plots.

``Report._repr_html_`` (and ``Comparison``'s) returns :func:`fragment`: the page's sections inside
one ``<div class="ndtracker-report">`` whose style rules all start with that class, so the
notebook's own headings, tables and body keep their look. :func:`plot` draws one layer's curve
with its phases and jumps as a matplotlib ``Figure`` to show, save or restyle.
"""

from __future__ import annotations

import re
from html import escape
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ndtracker.reports import html as page
from ndtracker.reports import terminal
from ndtracker.reports.figures import PHASE_COLORS, SPACE_COLORS, label
from ndtracker.reports.text import display_name

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from ndtracker.reports.model import Comparison, Report

__all__ = ["SCOPE", "fragment", "scoped_css", "plot"]

SCOPE = "ndtracker-report"
_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def scoped_css(css: str, scope: str = SCOPE) -> str:
    """Prefix every selector of ``css`` with ``.scope`` (``body`` becomes the scope itself)."""
    rules = []
    for selectors, body in _RULE.findall(css):
        scoped = [_scope(selector.strip(), scope) for selector in selectors.split(",") if selector.strip()]
        rules.append(f"{', '.join(scoped)} {{{body}}}")
    return "\n".join(rules)


def _scope(selector: str, scope: str) -> str:
    if selector == "body":
        return f".{scope}"
    return f".{scope} {selector}"


def fragment(record: Report | Comparison) -> str:
    """The record's HTML sections in one scoped ``<div>``: no ``<html>``, ``<body>`` or global style."""
    with terminal.progress_bar(False) as bar:
        sections = record._sections(bar)
    title = escape(record._title())
    style = f"<style>{scoped_css(page.CSS)}</style>"
    body = "\n".join(sections)
    return f'<div class="{SCOPE}">\n{style}\n<h2>{title}</h2>\n{body}\n</div>'


def plot(rep: Report, layer: str, space: str | None = None, *, ax: Axes | None = None) -> Figure:
    """Draw one layer's metric over the steps, phases shaded and jumps marked.

    Args:
        rep: The report.
        layer: A layer of ``rep.layers``.
        space: ``"activation"`` or ``"weight"`` (default: the first space the layer has).
        ax: Axes to draw on (default: a new figure's).

    Returns:
        The figure drawn on.

    Raises:
        ValueError: ``layer`` is not in the report, or has no series in ``space``.
    """
    item = _series(rep, layer, space)
    fig = ax.figure if ax is not None else Figure(figsize=(7, 2.6), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    for row in _rows(rep.phases, item):
        ax.axvspan(row.start_step, row.end_step, color=PHASE_COLORS.get(row.kind, "#eee"), alpha=0.5, lw=0)
    ax.plot(item.steps, item.values, color=SPACE_COLORS.get(item.space, "C0"), lw=1)
    for row in _rows(rep.jumps, item):
        ax.axvline(row.step, color="#555", lw=0.8, ls=":")
    ax.set_title(label(f"{display_name(item.layer)}, {item.space}"), fontsize=9, loc="left", family="monospace")
    ax.set_xlabel("step")
    ax.set_ylabel(rep.metric)
    return fig


def _series(rep: Report, layer: str, space: str | None):
    matches = [s for s in rep.series if s.layer == layer and (space is None or s.space == space)]
    if not matches:
        names = ", ".join(display_name(name) for name in rep.layers[:8])
        where = f" in space {space!r}" if space is not None else ""
        raise ValueError(f"layer={layer!r} has no series{where} in this report; its layers are: {names}")
    return matches[0]


def _rows(frame, item):
    if frame.empty:
        return []
    keep = (frame["layer"] == item.layer) & (frame["space"] == item.space)
    return list(frame[np.asarray(keep)].itertuples(index=False))
