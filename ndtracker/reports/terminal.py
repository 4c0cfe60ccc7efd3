"""Render reports and comparisons for the terminal with rich, and show progress bars.

Pure rendering: every function takes a finished :class:`~ndtracker.reports.Report` (or
:class:`~ndtracker.reports.Comparison`) and returns rich renderables; nothing here loads or
analyses. Every cell and title is a rich ``Text`` made from `text.literal` strings, never markup:
a layer named ``[/x]`` or ``[link=...]`` is shown as it is written. Run facts and number formats
shared with the HTML page are in :mod:`~ndtracker.reports.text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from ndtracker.reports import science_views
from ndtracker.reports.story import LEGEND, layer_label, story_lines
from ndtracker.reports.text import comparison_lines, display_name, info_lines, literal, number
from ndtracker.vocabulary import SPACES

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Comparison, Report

SHOWN_PHASES = 6  # phases listed per layer in the terminal before eliding the middle
LAYER_WIDTH = 24  # characters of a layer name kept on one line (longer ones fold)
PHASES_WIDTH = 22  # the phases column gets at least this, however narrow the terminal
SHOWN_JUMPS = 2  # largest jumps listed per layer in the terminal
PHASE_GLYPHS = {"collapse": "↘", "expansion": "↗", "stabilization": "→"}  # in compare's table


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    """Yield a transient rich progress bar on stderr; a silent one unless enabled and a terminal.

    Args:
        enabled: Whether a bar is wanted at all.

    Yields:
        The ``rich.progress.Progress`` (disabled ones accept the same calls and show nothing).
    """
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    disable = not (enabled and console.is_terminal)
    with Progress(*columns, console=console, transient=True, disable=disable) as bar:
        yield bar


# ------------------------------------------------------------------------------ report


def report_view(rep: Report) -> RenderableType:
    """Return the terminal summary of a report: run facts, the story, one table per space, warnings."""
    tables = [part for table in _space_tables(rep) for part in (Text(), table)]
    notes = [Text(f"warning: {literal(note)}", style="yellow") for note in rep.notes]
    return Group(_header(rep), Text(), *_story(rep), *tables, *science_views.terminal_parts(rep), *notes)


def _story(rep: Report) -> list[Text]:
    """``What happened``: one line per main change, then what the labels mean in one line."""
    lines = [Text("What happened", style="bold")]
    lines += [Text(f"  • {line}") for line in story_lines(rep)]
    lines.append(Text(f"  ({LEGEND})", style="dim"))
    return lines


def _header(rep: Report) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in info_lines(rep):
        grid.add_row(Text(key), Text(value))
    return grid


def _space_tables(rep: Report) -> list[Table]:
    tables = []
    for space in SPACES:
        rows = rep.summary[rep.summary["space"] == space]
        if len(rows):
            tables.append(_space_table(rep, space, rows))
    return tables


def _space_table(rep: Report, space: str, rows: pd.DataFrame) -> Table:
    table = Table(title=Text(literal(f"{space} space: {rep.metric}")), title_justify="left", expand=True)
    _add_layer_column(table, [_label(rep, name) for name in rows["layer"]])
    for name in ("first", "last"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("phases (steps)", ratio=1, min_width=PHASES_WIDTH)
    table.add_column("jumps", overflow="fold")
    phases = _by_layer(rep.phases, space)
    jumps = _by_layer(rep.jumps, space)
    for row in rows.itertuples(index=False):
        numbers = [number(getattr(row, name)) for name in ("first", "last")]
        cells = [_phase_text(phases.get(row.layer)), _jump_text(jumps.get(row.layer))]
        table.add_row(*_texts(_label(rep, row.layer), *numbers, *cells))
    return table


def _label(rep: Report, layer: str) -> str:
    """The layer's name, and its type and shape on the line below (when the run recorded them)."""
    name, label = display_name(layer), layer_label(rep, layer)
    return name if label == name else f"{name}\n{label[len(name) + 1:]}"


def _add_layer_column(table: Table, names: Any) -> None:
    """A layer column wide enough for names of up to :data:`LAYER_WIDTH` characters on one line;
    longer ones fold (a name's type and shape go on the line below it)."""
    widest = max((len(line) for name in names for line in name.split("\n")[:1]), default=5)
    table.add_column("layer", overflow="fold", min_width=min(widest, LAYER_WIDTH))


def _texts(*cells: str) -> list[Text]:
    """Cells as rich ``Text``, never parsed as markup (names are already `literal`)."""
    return [Text(cell) for cell in cells]


def _by_layer(frame: pd.DataFrame, space: str) -> dict[str, pd.DataFrame]:
    return dict(tuple(frame[frame["space"] == space].groupby("layer", sort=False)))


def _phase_text(phases: pd.DataFrame | None) -> str:
    if phases is None or not len(phases):
        return "-"
    parts = [f"{p.kind} {p.start_step}-{p.end_step}{_change(p)}" for p in phases.itertuples(index=False)]
    if len(parts) > SHOWN_PHASES:
        hidden = len(parts) - SHOWN_PHASES + 1
        half = SHOWN_PHASES // 2
        parts = parts[:half] + [f"... {hidden} more"] + parts[1 - half :]
    return ", ".join(parts)


def _change(phase: Any) -> str:
    """`` (-70%)``: a trend's net relative change; nothing for a stabilization."""
    change = getattr(phase, "relative_change", float("nan"))
    if phase.kind == "stabilization" or not np.isfinite(change):
        return ""
    return f" ({change:+.0%})"


def _jump_text(jumps: pd.DataFrame | None) -> str:
    if jumps is None or not len(jumps):
        return "-"
    largest = jumps.loc[jumps["z"].abs().sort_values(ascending=False).index[:SHOWN_JUMPS]]
    largest = largest.sort_values("step")
    shown = [f"{_arrow(j.direction)}{abs(j.size):.3g}{_relative(j)} @{j.step}" for j in largest.itertuples()]
    more = len(jumps) - len(shown)
    return "\n".join(shown + ([f"+{more} more"] if more else []))


def _relative(jump: Any) -> str:
    size = getattr(jump, "relative_size", float("nan"))
    return f" ({abs(size):.0%})" if np.isfinite(size) else ""


def _arrow(direction: str) -> str:
    return {"up": "↑", "down": "↓"}.get(direction, "?")


# ------------------------------------------------------------------------------ comparison


def comparison_view(comparison: Comparison) -> RenderableType:
    """Return the terminal view of a comparison: one line per run, then a table per space."""
    lines = [Text(line) for line in comparison_lines(comparison)]  # already literal
    spaces = comparison.table["space"].unique()
    tables = [part for space in spaces for part in (Text(""), _compare_table(comparison, space))]
    return Group(*lines, *tables)


def _compare_table(comparison: Comparison, space: str) -> Table:
    legend = ", ".join(f"{glyph} {kind}" for kind, glyph in PHASE_GLYPHS.items())
    rows = comparison.table[comparison.table["space"] == space]
    title = Text(literal(f"{space} space: {comparison.a.metric}, A vs B"))
    table = Table(title=title, title_justify="left", caption=Text(legend))
    _add_layer_column(table, rows["layer"])
    for name in ("A\nfirst", "A\nlast", "B\nfirst", "B\nlast"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("A\nphases", overflow="fold")
    table.add_column("B\nphases", overflow="fold")
    for row in rows.itertuples(index=False):
        numbers = [number(v) for v in (row.first_a, row.last_a, row.first_b, row.last_b)]
        table.add_row(*_texts(display_name(row.layer), *numbers, _glyphs(row.phases_a), _glyphs(row.phases_b)))
    return table


def _glyphs(kinds: str) -> str:
    if kinds == "-":
        return kinds
    return "".join(PHASE_GLYPHS.get(kind, "?") for kind in kinds.split(" > "))
