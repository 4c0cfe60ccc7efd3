"""Turn a run directory into a phase report: tables, a terminal summary, a self-contained HTML page.

A report is built from the Parquet logs alone: no model, no GPU, and no torch (this module and
everything it imports stay torch-free, so reports run anywhere). Jumps and phases are detected
offline, on the full series of each layer and space, with :mod:`ndtracker.detect`; the tables give
training steps, never positions in a series.

Example:
    >>> import ndtracker
    >>> rep = ndtracker.report("runs/exp1", metric="stable_rank")  # doctest: +SKIP
    >>> rep.phases[["layer", "space", "start_step", "end_step", "kind"]]  # doctest: +SKIP
    >>> rep.render()  # a rich summary in the terminal  # doctest: +SKIP
    >>> rep.to_html("report.html")  # one file, no network needed to view it  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import html
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from ndtracker import detect, store
from ndtracker.errors import NdtrackerError, RunNotFoundError

Metric = Literal["stable_rank", "participation_ratio", "effective_rank", "energy90"]
Space = Literal["activation", "weight"]

METRICS: tuple[str, ...] = ("stable_rank", "participation_ratio", "effective_rank", "energy90")
SPACES: tuple[str, ...] = ("activation", "weight")
PARALLEL_MIN_SAMPLES = 2_000_000  # below this, spawning worker processes costs more than it saves
MAX_TABLE_ROWS = 2000  # rows of the phase and jump tables written to HTML, at most
SHOWN_PHASES = 6  # phases listed per layer in the terminal before eliding the middle
SHOWN_JUMPS = 2  # largest jumps listed per layer in the terminal
PHASE_GLYPHS = {"collapse": "↘", "expansion": "↗", "stabilization": "→"}  # in compare's table


@dataclass(frozen=True, eq=False)
class Series:
    """One layer's metric in one space over the sampled steps of a run.

    Attributes:
        layer: Layer name, as in ``model.named_modules()``.
        space: ``"activation"`` or ``"weight"``.
        steps: Sampled training steps, shape (n,), int64, increasing.
        values: The metric at those steps, shape (n,), float64; NaN where not measured.
        loss: The loss logged at those steps, shape (n,), float64; NaN where not given.
        problems: (status, count) for samples whose status is not ``"ok"``.
    """

    layer: str
    space: str
    steps: np.ndarray
    values: np.ndarray
    loss: np.ndarray
    problems: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, eq=False)
class Report:
    """The phase report of one run: what :func:`report` returns.

    Attributes:
        run_dir: The run directory, as given.
        run: The run's info (``run_id``, ``started``, ``model``, ``options``, ``layers``, ...).
        run_ids: Every run id found in the directory, oldest first.
        metric: The metric reported.
        layers: The reported layers, in tracked (depth) order.
        summary: One row per layer and space: ``samples``, ``nonfinite``, ``first_step``,
            ``last_step``, ``first``, ``last``, ``min``, ``max`` of the metric, and the numbers of
            ``phases`` and ``jumps``.
        phases: One row per phase: ``layer``, ``space``, ``metric``, ``start_step``, ``end_step``
            (inclusive: the phase's last sampled step), ``kind`` (``collapse``, ``expansion`` or
            ``stabilization``), ``samples``, ``change`` (fitted end minus start value),
            ``relative_change`` (over the phase's mean level).
        jumps: One row per jump: ``layer``, ``space``, ``metric``, ``step`` (first step at the new
            level), ``direction`` (``up`` or ``down``), ``size`` (signed shift), ``z`` (its
            significance), ``before`` and ``after`` (levels either side).
        series: The series the tables were computed from, for plotting.
        notes: Warnings worth showing with the report (non-finite samples, other runs).
    """

    run_dir: str
    run: dict[str, Any]
    run_ids: tuple[str, ...]
    metric: str
    layers: tuple[str, ...]
    summary: pd.DataFrame
    phases: pd.DataFrame
    jumps: pd.DataFrame
    series: tuple[Series, ...]
    notes: tuple[str, ...] = ()

    @property
    def run_id(self) -> str:
        """The reported run's id."""
        return str(self.run.get("run_id", ""))

    def __repr__(self) -> str:
        return (
            f"Report(run_id={self.run_id!r}, metric={self.metric!r}, layers={len(self.layers)}, "
            f"phases={len(self.phases)}, jumps={len(self.jumps)})"
        )

    @property
    def loss(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (steps, loss) of the sampled steps with a finite loss, from the fullest series."""
        if not self.series:
            return np.zeros(0, np.int64), np.zeros(0)
        best = max(self.series, key=lambda s: int(np.isfinite(s.loss).sum()))
        keep = np.isfinite(best.loss)
        return best.steps[keep], best.loss[keep]

    def render(self, console: Console | None = None) -> None:
        """Print the terminal summary.

        Args:
            console: Where to print (default: a new ``rich.console.Console`` on stdout).
        """
        (console or Console()).print(self)

    def __rich__(self) -> RenderableType:
        """Return the terminal summary as a rich renderable."""
        tables = [part for table in _space_tables(self) for part in (Text(), table)]
        return Group(_header(self), *tables, *_notes(self))

    def to_html(self, path: str | Path | None = None, *, progress: bool = False) -> str:
        """Render the report as one self-contained HTML page (inline SVG and CSS, no scripts).

        Args:
            path: File to write the page to (default: only return it).
            progress: Show a transient progress bar on stderr while drawing (default False).

        Returns:
            The HTML page.
        """
        with progress_bar(progress) as bar:
            sections = [_html_info(self), *_html_overview(self), _html_summary(self)]
            sections += _html_layers(self, bar)
            sections += _html_tables(self)
        return _write_page(f"ndtracker report: {self.run_id}", sections, path)


def report(
    run_dir: str | Path,
    *,
    run_id: str | None = None,
    metric: Metric = "stable_rank",
    layers: str | Sequence[str] | None = None,
    space: Space | None = None,
    progress: bool = False,
    workers: int | None = 1,
) -> Report:
    """Build the phase report of a run from its logs.

    Args:
        run_dir: The run directory (holds ``run.json`` and ``metrics/``).
        run_id: Which run of the directory (default: the latest one).
        metric: The metric column to analyse (default ``"stable_rank"``).
        layers: A glob pattern (``"blocks.*.mlp"``) or a list of names or patterns (default: all).
        space: ``"activation"`` or ``"weight"`` only (default: both).
        progress: Show a transient progress bar on stderr while loading and analysing.
        workers: Processes for detection (default 1: all in this process). With more, a run of at
            least ``PARALLEL_MIN_SAMPLES`` samples in all is analysed by that many spawned
            processes; ``None`` means one per CPU core, up to 8. Calling code with ``workers != 1``
            must sit under ``if __name__ == "__main__":`` (Python's rule for spawned processes).

    Returns:
        The report: tables as DataFrames, renderable to the terminal and to HTML.

    Raises:
        RunNotFoundError: ``run_dir`` does not exist or holds no run, or ``run_id`` is not in it.
        SchemaError: The logs were written by a newer schema version.
        NdtrackerError: The run has no rows yet.
        ValueError: ``metric`` or ``space`` is unknown, ``layers`` matches no layer, or the metric
            was not computed in this run.
    """
    _check_choice("metric", metric, METRICS)
    if space is not None:
        _check_choice("space", space, SPACES)
    workers = _check_workers(workers)
    with progress_bar(progress) as bar:
        runs = store.read_run_info(run_dir)
        info = _choose_run(runs, run_id, run_dir)
        task = bar.add_task("loading logs", total=None)
        frame = _load(run_dir, info["run_id"], metric)
        bar.update(task, total=1, completed=1)
        series = _select(_split(frame, metric, space), info, layers, metric, space)
        tables = _analyse(series, bar, workers)
    return _assemble(str(run_dir), info, runs, metric, series, tables)


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


# ------------------------------------------------------------------------------ loading


def _check_choice(name: str, value: object, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, min(os.cpu_count() or 1, 8))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return workers


def _choose_run(runs: list[dict], run_id: str | None, run_dir: str | Path) -> dict:
    if not runs:
        raise RunNotFoundError(f"{str(run_dir)!r} holds no ndtracker run (no run.json)")
    if run_id is None:
        return max(runs, key=lambda run: str(run.get("started", "")))
    for run in runs:
        if run.get("run_id") == run_id:
            return run
    ids = ", ".join(str(run.get("run_id")) for run in runs)
    raise RunNotFoundError(f"run_id={run_id!r} is not in {str(run_dir)!r}; its runs are: {ids}")


def _load(run_dir: str | Path, run_id: str, metric: str) -> pd.DataFrame:
    columns = ["step", "layer", "space", metric, "loss", "status"]
    frame = store.load(run_dir, run_id=run_id, columns=columns)
    if len(frame) == 0:
        raise NdtrackerError(
            f"run {run_id} in {str(run_dir)!r} has no rows yet: the tracker writes every "
            "flush_secs and on close(); try again later"
        )
    return frame


def _split(frame: pd.DataFrame, metric: str, space: str | None) -> list[Series]:
    """Cut the long table into one series per (layer, space), each sorted by step."""
    layer_codes, layer_names = _codes(frame["layer"])
    space_codes, space_names = _codes(frame["space"])
    width = max(len(space_names), 1)
    key = layer_codes.astype(np.int64) * width + space_codes
    key = key.astype(np.int16 if len(layer_names) * width < 2**15 else np.int64)  # radix sort
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    columns = _columns(frame, metric, order)
    out = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)]):
        layer, where = divmod(int(key[order[lo]]), width)
        if space is None or space_names[where] == space:
            cut = {name: column[lo:hi] for name, column in columns.items()}
            out.append(_series(str(layer_names[layer]), str(space_names[where]), cut))
    return out


def _codes(column: pd.Series) -> tuple[np.ndarray, Sequence[str]]:
    """Integer codes and names of a string column; cheap for categoricals (dictionary columns)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), list(column.cat.categories)
    codes, names = pd.factorize(column, sort=False)
    return codes, list(names)


def _columns(frame: pd.DataFrame, metric: str, order: np.ndarray) -> dict[str, np.ndarray]:
    bad = (frame["status"] != "ok").fillna(True).to_numpy(bool)
    return {
        "steps": frame["step"].to_numpy(np.int64)[order],
        "values": frame[metric].to_numpy(np.float64, na_value=np.nan)[order],
        "loss": frame["loss"].to_numpy(np.float64, na_value=np.nan)[order],
        "bad": bad[order],
        "status": frame["status"].to_numpy(object)[order] if bad.any() else _all_ok(len(order)),
    }


def _all_ok(length: int) -> np.ndarray:
    return np.broadcast_to(np.array("ok", dtype=object), (length,))


def _series(layer: str, space: str, cols: dict[str, Any]) -> Series:
    steps, values, loss = cols["steps"], cols["values"], cols["loss"]
    if steps.size > 1 and np.any(np.diff(steps) < 0):
        order = np.argsort(steps, kind="stable")
        steps, values, loss = steps[order], values[order], loss[order]
    problems: tuple[tuple[str, int], ...] = ()
    if cols["bad"].any():
        status = pd.Series(cols["status"][cols["bad"]]).fillna("missing").value_counts()
        problems = tuple((str(name), int(count)) for name, count in status.items())
    return Series(layer, space, steps, values, loss, problems)


def _select(series: list[Series], info: dict, layers: Any, metric: str, space: Any) -> list[Series]:
    if not series:
        raise ValueError(f"space={space!r}: run {info['run_id']} has no rows in that space")
    order = _depth_order(info, series)
    chosen = _match_layers(order, layers, info)
    rank = {name: i for i, name in enumerate(order)}
    picked = [s for s in series if s.layer in chosen]
    picked.sort(key=lambda s: (rank[s.layer], SPACES.index(s.space) if s.space in SPACES else 9))
    _check_computed(info, picked, metric)
    return picked


def _check_computed(info: dict, series: list[Series], metric: str) -> None:
    listed = info.get("options", {}).get("metrics")
    if listed is not None:
        missing = metric not in listed
    else:
        missing = not any(np.isfinite(s.values).any() or s.problems for s in series)
    if missing:
        computed = ", ".join(listed or []) or "none"
        raise ValueError(
            f"metric={metric!r} was not computed in run {info['run_id']} (its column is empty); "
            f"computed: {computed}. Ask for it with Tracker(..., metrics=(...))"
        )


def _depth_order(info: dict, series: list[Series]) -> list[str]:
    """Tracked layers in the order of run.json (depth order), then any others as found."""
    tracked = [str(layer["name"]) for layer in info.get("layers", []) if "name" in layer]
    present = {s.layer for s in series}
    extra = [s.layer for s in series if s.layer not in tracked]
    return [name for name in tracked if name in present] + list(dict.fromkeys(extra))


def _match_layers(names: list[str], layers: Any, info: dict) -> set[str]:
    if layers is None:
        return set(names)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = {n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not chosen:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"layers={layers!r} matched no layer of run {info['run_id']}; its layers are: {shown}"
        )
    return chosen


# ------------------------------------------------------------------------------ analysis

PHASE_COLUMNS = ["layer", "space", "start_step", "end_step", "kind", "samples", "change"]
PHASE_COLUMNS += ["relative_change"]
JUMP_COLUMNS = ["layer", "space", "step", "direction", "size", "z", "before", "after"]


def _analyse(series: list[Series], bar: Progress, workers: int) -> dict[str, list[dict]]:
    """Detect jumps and phases on each full series; rows in training steps."""
    tables: dict[str, list[dict]] = {"summary": [], "phases": [], "jumps": []}
    found = _detect_all(series, workers)
    found = bar.track(found, total=len(series), description="detecting phases")
    for item, (phases, jumps) in zip(series, found):
        tables["phases"] += [_phase_row(item, phase) for phase in phases]
        tables["jumps"] += [_jump_row(item, jump) for jump in jumps]
        tables["summary"].append(_summary_row(item, len(phases), len(jumps)))
    return tables


def _detect_all(series: list[Series], workers: int) -> Iterator[tuple[list, list]]:
    """Run detection in this process, or in ``workers`` spawned processes for large runs."""
    values = [item.values for item in series]
    workers = min(workers, len(values))
    if workers <= 1 or sum(v.size for v in values) < PARALLEL_MIN_SAMPLES:
        yield from map(_detect, values)
        return
    context = multiprocessing.get_context("spawn")  # no fork: the caller may run threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_detect, values)


def _detect(values: np.ndarray) -> tuple[list, list]:
    if not np.isfinite(values).any():
        return [], []
    with warnings.catch_warnings():  # the report notes non-finite samples itself, once per series
        warnings.filterwarnings("ignore", message=".*non-finite", category=RuntimeWarning)
        return detect.label_phases(values), detect.find_jumps(values)


def _phase_row(series: Series, phase: detect.Phase) -> dict[str, Any]:
    return {
        "layer": series.layer, "space": series.space,
        "start_step": int(series.steps[phase.start]), "end_step": int(series.steps[phase.stop - 1]),
        "kind": str(phase.kind), "samples": int(phase.stop - phase.start),
        "change": float(phase.change), "relative_change": float(phase.relative_change),
    }  # fmt: skip


def _jump_row(series: Series, jump: detect.Jump) -> dict[str, Any]:
    return {
        "layer": series.layer, "space": series.space, "step": int(series.steps[jump.index]),
        "direction": "up" if jump.direction > 0 else "down", "size": float(jump.size),
        "z": float(jump.z), "before": float(jump.before), "after": float(jump.after),
    }  # fmt: skip


def _summary_row(series: Series, phases: int, jumps: int) -> dict[str, Any]:
    values = series.values
    finite = np.flatnonzero(np.isfinite(values))
    row = {"layer": series.layer, "space": series.space, "samples": int(values.size)}
    row["nonfinite"] = int(values.size - finite.size)
    row["first_step"] = int(series.steps[0]) if values.size else None
    row["last_step"] = int(series.steps[-1]) if values.size else None
    have = finite.size > 0
    row["first"] = float(values[finite[0]]) if have else np.nan
    row["last"] = float(values[finite[-1]]) if have else np.nan
    row["min"] = float(values[finite].min()) if have else np.nan
    row["max"] = float(values[finite].max()) if have else np.nan
    return {**row, "phases": phases, "jumps": jumps}


def _assemble(
    run_dir: str, info: dict, runs: list[dict], metric: str, series: list[Series], tables: dict
) -> Report:
    frames = {
        "summary": _frame(tables["summary"], ["layer", "space"], info, metric),
        "phases": _frame(tables["phases"], PHASE_COLUMNS, info, metric),
        "jumps": _frame(tables["jumps"], JUMP_COLUMNS, info, metric),
    }
    ordered = sorted(runs, key=lambda run: str(run.get("started", "")))
    layers = tuple(dict.fromkeys(s.layer for s in series))
    notes = _problem_notes(series) + _run_notes(info, ordered)
    return Report(
        run_dir, info, tuple(str(r.get("run_id")) for r in ordered), metric, layers,
        series=tuple(series), notes=tuple(notes), **frames,
    )  # fmt: skip


def _frame(rows: list[dict], columns: list[str], info: dict, metric: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else columns)
    frame.insert(0, "run_id", str(info["run_id"]))
    frame.insert(3, "metric", metric)
    return frame


def _problem_notes(series: list[Series]) -> list[str]:
    notes = []
    for item in series:
        nonfinite = int((~np.isfinite(item.values)).sum())
        if nonfinite or item.problems:
            why = ", ".join(f"{status} x{count}" for status, count in item.problems)
            notes.append(
                f"{item.layer} ({item.space}): {nonfinite} of {item.values.size} samples not "
                f"finite" + (f"; status {why}" if why else "")
            )
    return notes


def _run_notes(info: dict, runs: list[dict]) -> list[str]:
    if len(runs) < 2:
        return []
    others = ", ".join(str(run.get("run_id")) for run in runs if run is not info)
    return [f"this directory holds {len(runs)} runs; pick another ({others}) with --run-id"]


# ------------------------------------------------------------------------------ terminal


def _header(rep: Report) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in _info_lines(rep):
        grid.add_row(key, value)
    return grid


def _info_lines(rep: Report) -> list[tuple[str, str]]:
    info = rep.run
    version = info.get("ndtracker_version", "?")
    tracked = len(info.get("layers", [])) or "?"
    lines = [("run", f"{rep.run_id}  ({rep.run_dir})"), ("started", str(info.get("started", "?")))]
    lines.append(("model", f"{info.get('model', '?')}, ndtracker {version}"))
    lines.append(("steps", _steps_line(rep)))
    lines.append(("layers", f"{len(rep.layers)} shown of {tracked} tracked"))
    steps, loss = rep.loss
    if loss.size:
        first, last = (f"{_number(loss[i])} at step {steps[i]}" for i in (0, -1))
        lines.append(("loss", f"{first} -> {last}"))
    return lines + [("metric", rep.metric)]


def _steps_line(rep: Report) -> str:
    ranges = [(int(s.steps[0]), int(s.steps[-1])) for s in rep.series if s.steps.size]
    low, high = min((a for a, _ in ranges), default=0), max((b for _, b in ranges), default=0)
    samples = max((s.steps.size for s in rep.series), default=0)
    every = rep.run.get("options", {}).get("every", "?")
    return f"{low}-{high}, every {every}, {samples} samples"


def _space_tables(rep: Report) -> list[Table]:
    tables = []
    for space in SPACES:
        rows = rep.summary[rep.summary["space"] == space]
        if len(rows):
            tables.append(_space_table(rep, space, rows))
    return tables


def _space_table(rep: Report, space: str, rows: pd.DataFrame) -> Table:
    table = Table(title=f"{space} space: {rep.metric}", title_justify="left", expand=True)
    widest = max((len(name) for name in rows["layer"]), default=5)
    table.add_column("layer", overflow="fold", min_width=min(widest, 24))
    for name in ("first", "last", "min", "max"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("phases (steps)", ratio=1)
    table.add_column("jumps")
    phases = dict(tuple(rep.phases[rep.phases["space"] == space].groupby("layer", sort=False)))
    jumps = dict(tuple(rep.jumps[rep.jumps["space"] == space].groupby("layer", sort=False)))
    for row in rows.itertuples(index=False):
        numbers = [_number(getattr(row, name)) for name in ("first", "last", "min", "max")]
        cells = [_phase_text(phases.get(row.layer)), _jump_text(jumps.get(row.layer))]
        table.add_row(row.layer, *numbers, *cells)
    return table


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


def _notes(rep: Report) -> list[Text]:
    return [Text(f"warning: {note}", style="yellow") for note in rep.notes]


def _arrow(direction: str) -> str:
    return {"up": "↑", "down": "↓"}.get(direction, "?")


def _number(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4g}"


# ------------------------------------------------------------------------------ HTML

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


def _write_page(title: str, sections: list[str], path: str | Path | None) -> str:
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def _html_info(rep: Report) -> str:
    lines = _info_lines(rep)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in lines)
    notes = "".join(f'<p class="note">warning: {html.escape(note)}</p>' for note in rep.notes)
    return f'<table class="info">{rows}</table>\n{notes}'


def _html_overview(rep: Report) -> list[str]:
    from ndtracker import figures

    xlim = _step_range(rep.series)
    steps, loss = rep.loss
    parts = ["<h2>Overview</h2>"]
    if loss.size:
        svg = figures.loss_figure(figures.Curve(steps, loss), xlim, "loss")
        parts.append(_figure(svg, "Training loss at the sampled steps (all plots share this axis)."))
    for space in SPACES:
        rows = [s for s in rep.series if s.space == space]
        if rows:
            svg = _heatmap(rows, f"{rep.metric}, {space} space", f"heat-{space}")
            parts.append(_figure(svg, f"{rep.metric} of each layer ({space}), input side on top."))
    return parts


def _heatmap(series: list[Series], title: str, salt: str) -> str:
    from ndtracker import figures

    low, high = _step_range(series)
    distinct = max(s.steps.size for s in series)
    edges = np.linspace(low, high + 1, min(figures.HEATMAP_COLUMNS, max(distinct, 1)) + 1)
    grid = np.vstack([figures.heatmap_grid(s.steps, s.values, edges) for s in series])
    return figures.heatmap_figure([s.layer for s in series], grid, edges, title, salt)


def _html_summary(rep: Report) -> str:
    columns = ["layer", "space", "samples", "nonfinite", "first", "last", "min", "max"]
    columns += ["phases", "jumps"]
    nav = " ".join(f'<a href="#layer-{i}">{html.escape(n)}</a>' for i, n in enumerate(rep.layers))
    return f"<h2>Summary</h2>\n<nav>{nav}</nav>\n" + _html_table(rep.summary[columns])


def _html_layers(rep: Report, bar: Progress) -> list[str]:
    from ndtracker import figures

    xlim = _step_range(rep.series)
    by_layer: dict[str, list[Series]] = {}
    for item in rep.series:
        by_layer.setdefault(item.layer, []).append(item)
    parts = [f"<h2>Layers: {html.escape(rep.metric)}</h2>", _legend()]
    for i, layer in enumerate(bar.track(rep.layers, description="drawing layers")):
        curves = [
            (figures.Curve(s.steps, s.values, s.space), _marks(rep, s))
            for s in by_layer[layer]
        ]
        svg = figures.layer_figure(layer, curves, rep.metric, xlim, f"layer-{i}")
        parts.append(f'<h3 id="layer-{i}">{html.escape(layer)}</h3>\n{_figure(svg)}')
    return parts


def _marks(rep: Report, series: Series) -> Any:
    from ndtracker import figures

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
    from ndtracker import figures

    spans = "".join(
        f'<span style="background:{color}33">{kind}</span>'
        for kind, color in figures.PHASE_COLORS.items()
    )
    return f'<p class="legend">Shaded phases: {spans} Triangles: jumps (up, down).</p>'


def _html_tables(rep: Report) -> list[str]:
    parts = []
    for title, frame in (("Phases", rep.phases), ("Jumps", rep.jumps)):
        parts.append(f"<h2>{title} ({len(frame)})</h2>")
        if len(frame) > MAX_TABLE_ROWS:
            parts.append(f'<p class="note">first {MAX_TABLE_ROWS} rows shown of {len(frame)}; '
                         "all are in the report's DataFrames</p>")
        parts.append(_html_table(frame.drop(columns=["run_id", "metric"]).head(MAX_TABLE_ROWS)))
    return parts


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f'<th class="{_align(frame[c])}">{html.escape(str(c))}</th>' for c in frame)
    body = []
    for row in frame.itertuples(index=False):
        cells = (_cell(value) for value in row)
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f'<td class="num">{_number(value)}</td>'
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


@dataclass(frozen=True, eq=False)
class Comparison:
    """Two runs side by side: the same metric on the layers both tracked.

    Attributes:
        a: The first run's report, restricted to the common layers.
        b: The second run's report, restricted to the common layers.
        layers: Layers present in both runs, in the first run's depth order.
        table: One row per layer and space: ``first_a``, ``last_a``, ``first_b``, ``last_b``,
            ``phases_a``, ``phases_b`` (the phase kinds in order, joined by ``" > "``).
    """

    a: Report
    b: Report
    layers: tuple[str, ...]
    table: pd.DataFrame

    def __repr__(self) -> str:
        return f"Comparison(a={self.a.run_id!r}, b={self.b.run_id!r}, layers={len(self.layers)})"

    def render(self, console: Console | None = None) -> None:
        """Print the comparison table.

        Args:
            console: Where to print (default: a new ``rich.console.Console`` on stdout).
        """
        (console or Console()).print(self)

    def __rich__(self) -> RenderableType:
        """Return the comparison as a rich renderable."""
        return Group(*_compare_header(self), _compare_table(self))

    def to_html(self, path: str | Path | None = None, *, progress: bool = False) -> str:
        """Render the comparison as one self-contained HTML page (overlaid curves, the table).

        Args:
            path: File to write the page to (default: only return it).
            progress: Show a transient progress bar on stderr while drawing (default False).

        Returns:
            The HTML page.
        """
        with progress_bar(progress) as bar:
            sections = [_html_compare_info(self), *_html_compare_figures(self, bar)]
            sections.append("<h2>Table</h2>\n" + _html_table(self.table))
        return _write_page(f"ndtracker compare: {self.a.run_id} vs {self.b.run_id}", sections, path)


def compare(
    run_a: str | Path,
    run_b: str | Path,
    *,
    metric: Metric = "stable_rank",
    layers: str | Sequence[str] | None = None,
    space: Space | None = None,
    run_id_a: str | None = None,
    run_id_b: str | None = None,
    progress: bool = False,
    workers: int | None = 1,
) -> Comparison:
    """Compare one metric between two runs, on the layers both runs tracked.

    Args:
        run_a: The first run directory.
        run_b: The second run directory (may be the same directory with another ``run_id_b``).
        metric: The metric column to compare (default ``"stable_rank"``).
        layers: A glob pattern or a list of names or patterns (default: all common layers).
        space: ``"activation"`` or ``"weight"`` only (default: both).
        run_id_a: Which run of ``run_a`` (default: its latest).
        run_id_b: Which run of ``run_b`` (default: its latest).
        progress: Show a transient progress bar on stderr while loading and analysing.
        workers: Processes for detection, as in :func:`report` (default 1).

    Returns:
        The comparison, renderable to the terminal and to HTML.

    Raises:
        RunNotFoundError, SchemaError, NdtrackerError, ValueError: as :func:`report`, for either
            run; ValueError also when the two runs have no layer in common.
    """
    options = {"metric": metric, "layers": layers, "space": space, "progress": progress}
    options["workers"] = workers
    a = report(run_a, run_id=run_id_a, **options)
    b = report(run_b, run_id=run_id_b, **options)
    common = tuple(layer for layer in a.layers if layer in set(b.layers))
    if not common:
        raise ValueError(
            f"runs {a.run_id} and {b.run_id} have no layer in common; "
            f"first has {', '.join(a.layers[:5])}; second has {', '.join(b.layers[:5])}"
        )
    a, b = _restrict(a, common), _restrict(b, common)
    return Comparison(a, b, common, _compare_rows(a, b))


def _restrict(rep: Report, layers: tuple[str, ...]) -> Report:
    keep = set(layers)
    return Report(
        rep.run_dir, rep.run, rep.run_ids, rep.metric, layers,
        summary=rep.summary[rep.summary["layer"].isin(keep)],
        phases=rep.phases[rep.phases["layer"].isin(keep)],
        jumps=rep.jumps[rep.jumps["layer"].isin(keep)],
        series=tuple(s for s in rep.series if s.layer in keep), notes=rep.notes,
    )  # fmt: skip


def _compare_rows(a: Report, b: Report) -> pd.DataFrame:
    keys = ["layer", "space"]
    left = a.summary[keys + ["first", "last"]].assign(phases=_kinds(a))
    right = b.summary[keys + ["first", "last"]].assign(phases=_kinds(b))
    table = left.merge(right, on=keys, how="inner", suffixes=("_a", "_b"))
    return table[keys + ["first_a", "last_a", "first_b", "last_b", "phases_a", "phases_b"]]


def _kinds(rep: Report) -> list[str]:
    sequences = rep.phases.groupby(["layer", "space"], sort=False)["kind"].agg(" > ".join)
    keys = zip(rep.summary["layer"], rep.summary["space"])
    return [sequences.get(key, "-") for key in keys]


def _compare_header(comparison: Comparison) -> list[Text]:
    lines = []
    for label, rep in (("A", comparison.a), ("B", comparison.b)):
        model = rep.run.get("model", "?")
        run = f"run {rep.run_id} ({rep.run_dir}), {model}"
        lines.append(Text(f"{label}: {run}, steps {_steps_line(rep)}"))
    return lines


def _compare_table(comparison: Comparison) -> Table:
    legend = ", ".join(f"{glyph} {kind}" for kind, glyph in PHASE_GLYPHS.items())
    table = Table(title=f"{comparison.a.metric}: A vs B", title_justify="left", caption=legend)
    table.add_column("layer", overflow="fold")
    table.add_column("space")
    for name in ("A first", "A last", "B first", "B last"):
        table.add_column(name, justify="right")
    table.add_column("A phases", overflow="fold")
    table.add_column("B phases", overflow="fold")
    for row in comparison.table.itertuples(index=False):
        numbers = [_number(v) for v in (row.first_a, row.last_a, row.first_b, row.last_b)]
        table.add_row(row.layer, row.space, *numbers, _glyphs(row.phases_a), _glyphs(row.phases_b))
    return table


def _glyphs(kinds: str) -> str:
    if kinds == "-":
        return kinds
    return "".join(PHASE_GLYPHS.get(kind, "?") for kind in kinds.split(" > "))


def _html_compare_info(comparison: Comparison) -> str:
    lines = [html.escape(str(line)) for line in _compare_header(comparison)]
    return "<p>" + "<br>\n".join(lines) + f"</p>\n<p>metric: {html.escape(comparison.a.metric)}</p>"


def _html_compare_figures(comparison: Comparison, bar: Progress) -> list[str]:
    from ndtracker import figures

    a, b = comparison.a, comparison.b
    parts = ["<h2>Loss</h2>"]
    (sa, la), (sb, lb) = a.loss, b.loss
    if la.size or lb.size:
        pair = ("", figures.Curve(sa, la, f"A {a.run_id}"), figures.Curve(sb, lb, f"B {b.run_id}"))
        parts.append(_figure(figures.compare_figure("loss", [pair], "loss", "cmp-loss")))
    parts.append(f"<h2>Layers: {html.escape(a.metric)}</h2>")
    for i, layer in enumerate(bar.track(comparison.layers, description="drawing layers")):
        pairs = _pairs(a, b, layer)
        svg = figures.compare_figure(layer, pairs, a.metric, f"cmp-{i}")
        parts.append(f'<h3 id="layer-{i}">{html.escape(layer)}</h3>\n{_figure(svg)}')
    return parts


def _pairs(a: Report, b: Report, layer: str) -> list[tuple[str, Any, Any]]:
    from ndtracker import figures

    first = {s.space: s for s in a.series if s.layer == layer}
    second = {s.space: s for s in b.series if s.layer == layer}
    pairs = []
    for space in (s for s in SPACES if s in first and s in second):
        x, y = first[space], second[space]
        pairs.append((space, figures.Curve(x.steps, x.values, f"A {a.run_id}"),
                      figures.Curve(y.steps, y.values, f"B {b.run_id}")))  # fmt: skip
    return pairs
