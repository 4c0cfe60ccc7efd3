"""Render reports and comparisons for the terminal with rich, and show progress bars.

Pure rendering: every function takes a finished :class:`ndtracker.reporting.Report` (or
:class:`ndtracker.comparison.Comparison`) and returns rich renderables or plain strings; nothing here
loads or analyses. The HTML page (:mod:`ndtracker.page`) reuses the run facts and number format.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from ndtracker.store import SPACES

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.comparison import Comparison
    from ndtracker.reporting import Report

SHOWN_PHASES = 6  # phases listed per layer in the terminal before eliding the middle
SHOWN_JUMPS = 2  # largest jumps listed per layer in the terminal
PHASE_GLYPHS = {"collapse": "↘", "expansion": "↗", "stabilization": "→"}  # in compare's table
MODEL_NAME = "(model)"  # how the model itself (layer name "") is shown


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


def display_name(layer: str) -> str:
    """Return how a layer is shown: its name, or ``(model)`` for a model tracked as a whole (``""``)."""
    return layer if layer else MODEL_NAME


def number(value: Any) -> str:
    """Format a metric value in four significant digits; ``-`` for a missing or non-finite one."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4g}"


# ------------------------------------------------------------------------------ report


def report_view(rep: Report) -> RenderableType:
    """Return the terminal summary of a report: run facts, one table per space, warnings."""
    tables = [part for table in _space_tables(rep) for part in (Text(), table)]
    notes = [Text(f"warning: {note}", style="yellow") for note in rep.notes]
    return Group(_header(rep), *tables, *notes)


def info_lines(rep: Report) -> list[tuple[str, str]]:
    """Return the run facts shown above a report, as (label, text) pairs.

    The run directory is shown by its name only, so the summary does not depend on where it lies.
    """
    info = rep.run
    version = info.get("ndtracker_version", "?")
    tracked = len(info.get("layers", [])) or "?"
    lines = [("run", f"{rep.run_id}  ({_folder_name(rep.run_dir)})")]
    lines.append(("started", str(info.get("started", "?"))))
    lines.append(("model", f"{info.get('model', '?')}, ndtracker {version}"))
    lines.append(("steps", steps_line(rep)))
    lines.append(("layers", f"{len(rep.layers)} shown of {tracked} tracked"))
    steps, loss = rep.loss
    if loss.size:
        first, last = (f"{number(loss[i])} at step {steps[i]}" for i in (0, -1))
        lines.append(("loss", f"{first} -> {last}"))
    return lines + [("metric", rep.metric)]


def steps_line(rep: Report) -> str:
    """Return ``first-last, every N, S samples`` for the report's series."""
    ranges = [(int(s.steps[0]), int(s.steps[-1])) for s in rep.series if s.steps.size]
    low, high = min((a for a, _ in ranges), default=0), max((b for _, b in ranges), default=0)
    samples = max((s.steps.size for s in rep.series), default=0)
    every = rep.run.get("options", {}).get("every", "?")
    return f"{low}-{high}, every {every}, {samples} samples"


def _folder_name(run_dir: str) -> str:
    path = Path(run_dir)
    return path.name or path.resolve().name or str(run_dir)


def _header(rep: Report) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in info_lines(rep):
        grid.add_row(key, value)
    return grid


def _space_tables(rep: Report) -> list[Table]:
    tables = []
    for space in SPACES:
        rows = rep.summary[rep.summary["space"] == space]
        if len(rows):
            tables.append(_space_table(rep, space, rows))
    return tables


def _space_table(rep: Report, space: str, rows: pd.DataFrame) -> Table:
    table = Table(title=f"{space} space: {rep.metric}", title_justify="left", expand=True)
    _add_layer_column(table, rows["layer"])
    for name in ("first", "last", "min", "max"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("phases (steps)", ratio=1)
    table.add_column("jumps")
    phases = _by_layer(rep.phases, space)
    jumps = _by_layer(rep.jumps, space)
    for row in rows.itertuples(index=False):
        numbers = [number(getattr(row, name)) for name in ("first", "last", "min", "max")]
        cells = [_phase_text(phases.get(row.layer)), _jump_text(jumps.get(row.layer))]
        table.add_row(display_name(row.layer), *numbers, *cells)
    return table


def _add_layer_column(table: Table, names: Any) -> None:
    """A layer column wide enough for names of up to 24 characters on one line; longer ones fold."""
    widest = max((len(display_name(name)) for name in names), default=5)
    table.add_column("layer", overflow="fold", min_width=min(widest, 24))


def _by_layer(frame: pd.DataFrame, space: str) -> dict[str, pd.DataFrame]:
    return dict(tuple(frame[frame["space"] == space].groupby("layer", sort=False)))


def _phase_text(phases: pd.DataFrame | None) -> str:
    if phases is None or not len(phases):
        return "-"
    parts = [f"{p.kind} {p.start_step}-{p.end_step}" for p in phases.itertuples(index=False)]
    if len(parts) > SHOWN_PHASES:
        hidden = len(parts) - SHOWN_PHASES + 1
        half = SHOWN_PHASES // 2
        parts = parts[:half] + [f"... {hidden} more"] + parts[1 - half :]
    return ", ".join(parts)


def _jump_text(jumps: pd.DataFrame | None) -> str:
    if jumps is None or not len(jumps):
        return "-"
    largest = jumps.loc[jumps["z"].abs().sort_values(ascending=False).index[:SHOWN_JUMPS]]
    largest = largest.sort_values("step")
    shown = [f"{_arrow(j.direction)}{abs(j.size):.3g} @{j.step}" for j in largest.itertuples()]
    more = len(jumps) - len(shown)
    return "\n".join(shown + ([f"+{more} more"] if more else []))


def _arrow(direction: str) -> str:
    return {"up": "↑", "down": "↓"}.get(direction, "?")


# ------------------------------------------------------------------------------ comparison


def comparison_view(comparison: Comparison) -> RenderableType:
    """Return the terminal view of a comparison: one line per run, then a table per space."""
    lines = [Text(line) for line in comparison_lines(comparison)]
    spaces = comparison.table["space"].unique()
    tables = [part for space in spaces for part in (Text(""), _compare_table(comparison, space))]
    return Group(*lines, *tables)


def comparison_lines(comparison: Comparison) -> list[str]:
    """Return one line per compared run: label, run id, directory, model and steps."""
    lines = []
    for label, rep in (("A", comparison.a), ("B", comparison.b)):
        model = rep.run.get("model", "?")
        lines.append(f"{label}: run {rep.run_id} ({rep.run_dir}), {model}, steps {steps_line(rep)}")
    return lines


def _compare_table(comparison: Comparison, space: str) -> Table:
    legend = ", ".join(f"{glyph} {kind}" for kind, glyph in PHASE_GLYPHS.items())
    rows = comparison.table[comparison.table["space"] == space]
    title = f"{space} space: {comparison.a.metric}, A vs B"
    table = Table(title=title, title_justify="left", caption=legend)
    _add_layer_column(table, rows["layer"])
    for name in ("A\nfirst", "A\nlast", "B\nfirst", "B\nlast"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("A\nphases", overflow="fold")
    table.add_column("B\nphases", overflow="fold")
    for row in rows.itertuples(index=False):
        numbers = [number(v) for v in (row.first_a, row.last_a, row.first_b, row.last_b)]
        table.add_row(display_name(row.layer), *numbers, _glyphs(row.phases_a), _glyphs(row.phases_b))
    return table


def _glyphs(kinds: str) -> str:
    if kinds == "-":
        return kinds
    return "".join(PHASE_GLYPHS.get(kind, "?") for kind in kinds.split(" > "))
