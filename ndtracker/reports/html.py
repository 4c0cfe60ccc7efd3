"""Render reports and comparisons as one self-contained HTML page (inline SVG and CSS, no scripts).

Pure rendering: every function takes a finished report (or comparison) and returns HTML text; the
figures are drawn by :mod:`~ndtracker.reports.figures`; this module is imported only when a page is
made, so the terminal report never pays for matplotlib.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from ndtracker.reports import figures, science_views
from ndtracker.store.files import atomic_write
from ndtracker.reports.class_figures import class_sections
from ndtracker.reports.story import GLOSSARY, layer_label, story_lines
from ndtracker.reports.text import comparison_lines, display_name, info_lines, number
from ndtracker.vocabulary import SPACES

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Comparison, Report, Series

MAX_TABLE_ROWS = 2000  # rows of the phase and jump tables written to HTML, at most

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font: 600 1em ui-monospace, monospace; margin: 1.5em 0 0.2em; }
table { border-collapse: collapse; font-size: 12.5px; margin: 0.5em 0; }
th, td { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.info th { color: #555; font-weight: 600; } .note { color: #8a5a00; }
.legend span { padding: 1px 6px; margin-right: 6px; border-radius: 3px; }
figure { margin: 0.5em 0; } svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 12.5px; }
nav a { margin-right: 0.8em; font-family: ui-monospace, monospace; font-size: 12px; }
"""


def write_page(title: str, sections: list[str], path: str | Path | None) -> str:
    """Wrap ``sections`` in a page titled ``title``; write it to ``path`` when given; return it.

    The file is written atomically (a fresh temporary file renamed over ``path``): a symlink or a
    FIFO planted at ``path`` is replaced, never written through or opened.
    """
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    if path is not None:
        with atomic_write(Path(path)) as handle:
            handle.write(page.encode("utf-8", "backslashreplace"))
    return page


def report_sections(rep: Report, bar: Progress) -> list[str]:
    """Return the HTML sections of a report: facts, overview plots, summary, layers, tables."""
    sections = [_info(rep), _story(rep), *_overview(rep), _summary(rep), *science_views.html_parts(rep, html_table)]
    extra = class_sections(rep.classes, rep.condensation, rep.class_phases, rep.layers,
                           lambda frame: html_table(frame.head(MAX_TABLE_ROWS)), _step_range(rep.series))  # fmt: skip
    return sections + _layers(rep, bar) + extra + _tables(rep)


def comparison_sections(comparison: Comparison, bar: Progress) -> list[str]:
    """Return the HTML sections of a comparison: runs, overlaid loss and layer curves, the table."""
    lines = [html.escape(line) for line in comparison_lines(comparison)]
    info = "<p>" + "<br>\n".join(lines) + f"</p>\n<p>metric: {html.escape(comparison.a.metric)}</p>"
    table = "<h2>Table</h2>\n" + html_table(_shown(comparison.table))
    return [info, *_compare_figures(comparison, bar), table]


def html_table(frame: pd.DataFrame) -> str:
    """Return ``frame`` as an HTML table, numbers right-aligned."""
    head = "".join(f'<th class="{_align(frame[c])}">{html.escape(str(c))}</th>' for c in frame)
    body = ["<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in frame.itertuples(index=False)]
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


# ------------------------------------------------------------------------------ report


def _info(rep: Report) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info_lines(rep))
    notes = "".join(f'<p class="note">warning: {html.escape(note)}</p>' for note in rep.notes)
    return f'<table class="info">{rows}</table>\n{notes}'


def _story(rep: Report) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in story_lines(rep))
    terms = "".join(f"<dt>{html.escape(kind)}</dt><dd>{html.escape(text)}</dd>" for kind, text in GLOSSARY.items())
    return f"<h2>What happened</h2>\n<ul>{items}</ul>\n<details><summary>What the labels mean</summary><dl>{terms}</dl></details>"


def _overview(rep: Report) -> list[str]:

    steps, loss = rep.loss
    parts = ["<h2>Overview</h2>"]
    if loss.size:
        svg = figures.loss_figure(figures.Curve(steps, loss), _step_range(rep.series), "loss")
        parts.append(_figure(svg, "Training loss at the sampled steps (all plots share this axis)."))
    for space in SPACES:
        rows = [s for s in rep.series if s.space == space]
        if rows:
            svg = _heatmap(rows, f"{rep.metric}, {space} space", f"heat-{space}")
            parts.append(_figure(svg, f"{rep.metric} of each layer ({space}), input side on top."))
    return parts


def _heatmap(series: list[Series], title: str, salt: str) -> str:

    low, high = _step_range(series)
    distinct = max(s.steps.size for s in series)
    edges = np.linspace(low, high + 1, min(figures.HEATMAP_COLUMNS, max(distinct, 1)) + 1)
    grid = np.vstack([figures.heatmap_grid(s.steps, s.values, edges) for s in series])
    names = [display_name(s.layer) for s in series]
    return figures.heatmap_figure(names, grid, edges, title, salt)


def _summary(rep: Report) -> str:
    columns = ["layer", "space", "samples", "nonfinite", "first", "last", "min", "max"]
    columns += ["phases", "jumps"]
    links = (f'<a href="#layer-{i}">{html.escape(display_name(n))}</a>' for i, n in enumerate(rep.layers))
    table = rep.summary[columns].assign(layer=rep.summary["layer"].map(lambda name: layer_label(rep, name)))
    return f"<h2>Summary</h2>\n<nav>{' '.join(links)}</nav>\n" + html_table(table)


def _layers(rep: Report, bar: Progress) -> list[str]:

    xlim = _step_range(rep.series)
    by_layer: dict[str, list[Series]] = {}
    for item in rep.series:
        by_layer.setdefault(item.layer, []).append(item)
    parts = [f"<h2>Layers: {html.escape(rep.metric)}</h2>", _legend()]
    for i, layer in enumerate(bar.track(rep.layers, description="drawing layers")):
        curves = [(figures.Curve(s.steps, s.values, s.space), _marks(rep, s)) for s in by_layer[layer]]
        svg = figures.layer_figure(display_name(layer), curves, rep.metric, xlim, f"layer-{i}")
        parts.append(_section(i, layer_label(rep, layer), svg))
    return parts


def _section(i: int, label: str, svg: str) -> str:
    return f'<h3 id="layer-{i}">{html.escape(label)}</h3>\n{_figure(svg)}'


def _marks(rep: Report, series: Series) -> Any:

    phases, jumps = _rows_of(rep.phases, series), _rows_of(rep.jumps, series)
    at = np.searchsorted(series.steps, jumps["step"].to_numpy(np.int64))
    values = series.values[np.minimum(at, max(series.values.size - 1, 0))]
    return figures.Marks(
        tuple(zip(phases["start_step"], phases["end_step"], phases["kind"])),
        tuple(zip(jumps["step"], values, jumps["direction"])),
    )


def _rows_of(frame: pd.DataFrame, series: Series) -> pd.DataFrame:
    return frame[(frame["layer"] == series.layer) & (frame["space"] == series.space)]


def _legend() -> str:

    spans = "".join(
        f'<span style="background:{color}33">{kind}</span>' for kind, color in figures.PHASE_COLORS.items()
    )
    return f'<p class="legend">Shaded phases: {spans} Triangles: jumps (up, down).</p>'


def _tables(rep: Report) -> list[str]:
    parts = []
    for title, frame in (("Phases", rep.phases), ("Jumps", rep.jumps)):
        parts.append(f"<h2>{title} ({len(frame)})</h2>")
        if len(frame) > MAX_TABLE_ROWS:
            parts.append(f'<p class="note">first {MAX_TABLE_ROWS} rows shown of {len(frame)}; '
                         "all are in the report's DataFrames</p>")  # fmt: skip
        parts.append(html_table(_shown(frame.drop(columns=["run_id", "metric"]).head(MAX_TABLE_ROWS))))
    return parts


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with its layer names as displayed (the model itself as ``(model)``)."""
    return frame.assign(layer=frame["layer"].map(display_name)) if "layer" in frame else frame


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f'<td class="num">{number(value)}</td>'
    if isinstance(value, (int, np.integer)):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _align(column: pd.Series) -> str:
    return "num" if pd.api.types.is_numeric_dtype(column) else ""


def _figure(svg: str, caption: str = "") -> str:
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{text}</figure>"


def _step_range(series: Sequence[Series]) -> tuple[float, float]:
    steps = [(s.steps[0], s.steps[-1]) for s in series if s.steps.size]
    if not steps:
        return (0.0, 1.0)
    low, high = min(a for a, _ in steps), max(b for _, b in steps)
    return (float(low), float(max(high, low + 1)))


# ------------------------------------------------------------------------------ comparison


def _compare_figures(comparison: Comparison, bar: Progress) -> list[str]:

    a, b = comparison.a, comparison.b
    parts = ["<h2>Loss</h2>"]
    (sa, la), (sb, lb) = a.loss, b.loss
    if la.size or lb.size:
        pair = ("", figures.Curve(sa, la, f"A {a.run_id}"), figures.Curve(sb, lb, f"B {b.run_id}"))
        parts.append(_figure(figures.compare_figure("loss", [pair], "loss", "cmp-loss")))
    parts.append(f"<h2>Layers: {html.escape(a.metric)}</h2>")
    for i, layer in enumerate(bar.track(comparison.layers, description="drawing layers")):
        svg = figures.compare_figure(display_name(layer), _pairs(a, b, layer), a.metric, f"cmp-{i}")
        parts.append(_section(i, layer_label(a, layer), svg))
    return parts


def _pairs(a: Report, b: Report, layer: str) -> list[tuple[str, Any, Any]]:

    first = {s.space: s for s in a.series if s.layer == layer}
    second = {s.space: s for s in b.series if s.layer == layer}
    pairs = []
    for space in (s for s in SPACES if s in first and s in second):
        x, y = first[space], second[space]
        pairs.append((space, figures.Curve(x.steps, x.values, f"A {a.run_id}"),
                      figures.Curve(y.steps, y.values, f"B {b.run_id}")))  # fmt: skip
    return pairs
