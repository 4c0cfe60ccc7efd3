"""Turn a run directory into a phase report: tables, a terminal summary, a self-contained HTML page.

A report is built from the Parquet logs alone: no model, no GPU, and no torch (this module and
everything it imports stay torch-free, so reports run anywhere). This module loads the logs and cuts
them into one series per layer and space; :mod:`~ndtracker.reports.analysis` detects jumps and phases
on each full series (the tables give training steps, never positions in a series), and the result is
a :class:`~ndtracker.reports.Report`.

Example:
    >>> import ndtracker
    >>> rep = ndtracker.report("runs/exp1", metric="stable_rank")  # doctest: +SKIP
    >>> rep.phases[["layer", "space", "start_step", "end_step", "kind"]]  # doctest: +SKIP
    >>> rep.render()  # a rich summary in the terminal  # doctest: +SKIP
    >>> rep.to_html("report.html")  # one file, no network needed to view it  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ndtracker import store
from ndtracker.store.runs import ALL, Selection, select_runs
from ndtracker.checks import choice, optional_positive_int
from ndtracker.errors import NdtrackerError
from ndtracker.reports import analysis, science
from ndtracker.reports.classes import class_tables
from ndtracker.reports.model import Report, Series
from ndtracker.reports.terminal import progress_bar
from ndtracker.reports.text import display_name
from ndtracker.vocabulary import METRICS, SPACES, Metric, Space

__all__ = ["report"]




def report(
    run_dir: str | Path,
    *,
    run_id: str | Sequence[str] | None = None,
    metric: Metric = "stable_rank",
    layers: str | Sequence[str] | None = None,
    space: Space | None = None,
    progress: bool = False,
    workers: int | None = 1,
    rank: int | None = None,
) -> Report:
    """Build the phase report of a run from its logs.

    Args:
        run_dir: The run directory (holds ``run.json`` and ``metrics/``).
        run_id: Which run of the directory: default the latest one, stitched to the runs it
            resumes (a Tracker built with ``start_step=`` in the same directory); a list of ids
            (or ``"A,B"``) to report runs that continue each other as one run.
        metric: The metric column to analyse (default ``"stable_rank"``).
        layers: A glob pattern (``"blocks.*.mlp"``) or a list of names or patterns (default: all).
        space: ``"activation"`` or ``"weight"`` only (default: both).
        progress: Show a transient progress bar on stderr while loading and analysing.
        workers: Processes for detection (default 1: all in this process). With more, a run of at
            least ``PARALLEL_MIN_SAMPLES`` samples in all is analysed by that many spawned
            processes; ``None`` means one per CPU core, up to 8. Calling code with ``workers != 1``
            must sit under ``if __name__ == "__main__":`` (Python's rule for spawned processes).
        rank: Which rank's rows of a torch.distributed run written with ``ranks="all"`` (each
            rank writes its own): default the rank that registered the run (0). A report covers
            one rank; other runs have one set of rows, so leave it None (0 is accepted).

    Returns:
        The report: tables as DataFrames, renderable to the terminal and to HTML.

    Raises:
        RunNotFoundError: ``run_dir`` does not exist or holds no run, or ``run_id`` is not in it.
        SchemaError: The logs were written by a newer schema version.
        NdtrackerError: The run has no rows yet.
        ValueError: ``metric`` or ``space`` is unknown, ``layers`` matches no layer, the metric
            was not computed in this run, or ``rank`` wrote no rows of it.
    """
    choice("metric", metric, METRICS)
    if space is not None:
        choice("space", space, SPACES)
    workers = _check_workers(workers)
    with progress_bar(progress) as bar:
        runs = store.read_run_info(run_dir)
        selection = _selection(runs, run_id, run_dir)
        info = selection.runs[-1]
        rank = _report_rank(info, rank)
        task = bar.add_task("loading logs", total=None)
        table = _load(run_dir, selection.run_ids, metric, rank)
        bar.update(task, total=1, completed=1)
        series = _select(_split(table, metric, space), info, layers, metric, space)
        tables = analysis.analyse(series, bar, workers)
        extras = science.science_frames(str(run_dir), info, selection.run_ids, metric, series, rank)
        extras |= class_tables(run_dir, selection.run_ids, info, list(dict.fromkeys(s.layer for s in series)), rank)
    return _assemble(str(run_dir), selection, runs, metric, series, tables, extras | {"rank": rank})


def _selection(runs: list[dict], run_id: str | Sequence[str] | None, run_dir: str | Path) -> Selection:
    if run_id == ALL:
        raise ValueError("run_id='all' mixes runs; a report covers one run, or runs that resume each "
                         "other: pass one run id or a list of them")  # fmt: skip
    return select_runs(runs, run_id, run_dir)


# ------------------------------------------------------------------------------ loading


def _check_workers(workers: int | None) -> int:
    workers = optional_positive_int("workers", workers)
    return max(1, min(os.cpu_count() or 1, 8)) if workers is None else workers


def _report_rank(info: dict, rank: int | None) -> int | None:
    """The rank whose rows a report reads: ``rank``, or the registering rank of a ``ranks="all"`` run.

    Each rank of such a run writes a row per (step, layer, space); a series mixing them would
    alternate between ranks. Other runs have one row per key, so they are read whole (None).
    """
    if rank is not None or info.get("distributed", {}).get("ranks") != "all":
        return rank
    return 0


def _load(run_dir: str | Path, run_ids: list[str], metric: str, rank: int | None = None) -> pa.Table:
    """Read the columns the report needs, in the order written: `_split` groups them itself."""
    columns = ["step", "layer", "space", metric, "loss", "status"]
    table = store.read_table(run_dir, run_id=run_ids, columns=columns, sort=False, rank=rank)
    if table.num_rows == 0:
        raise NdtrackerError(
            f"run {', '.join(run_ids)} in {str(run_dir)!r} has no rows: it logged nothing (no "
            "sampled step reached a flush); if its Tracker is still running, rows appear every "
            "flush_secs and at close()"
        )
    return table


def _split(table: pa.Table, metric: str, space: str | None) -> list[Series]:
    """Cut the long table into one series per (layer, space), each sorted by step."""
    layer_codes, layer_names = _codes(table["layer"])
    space_codes, space_names = _codes(table["space"])
    width = len(space_names)
    wanted = None if space is None else _position(space_names, space)
    columns, statuses = _columns(table, metric)
    out = []
    for code, rows in _groups(layer_codes * np.int32(width) + space_codes):
        layer, where = divmod(code, width)
        if wanted is None or where == wanted:
            cut = {name: column[rows] for name, column in columns.items()}  # strided views or copies
            cut["values"] = np.ascontiguousarray(cut["values"])  # detection passes over it often
            out.append(_series(layer_names[layer], space_names[where], cut, statuses))
    return out


def _groups(key: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """Return each distinct key with its rows, in order.

    The rows are a strided slice when every step repeats the same keys in the same order (as a
    writer writes them): no sort, no index array. Otherwise they come from a stable sort.
    """
    period = int(np.count_nonzero(np.bincount(key))) if key.size else 1
    first = key[:period]
    if key.size % period == 0 and np.unique(first).size == period and np.array_equal(key[period:], key[:-period]):
        return [(int(code), slice(start, None, period)) for start, code in enumerate(first)]
    narrow = key.astype(np.int16) if key.size and key.max() < 2**15 else key  # radix sort
    order = np.argsort(narrow, kind="stable")
    ordered = key[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return [(int(ordered[lo]), order[lo:hi]) for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, key.size])]


def _codes(column: pa.ChunkedArray, missing: str = "(missing)") -> tuple[np.ndarray, list[str]]:
    """Return the int32 codes and the names of a dictionary column (one dictionary); null: last name."""
    dictionary = column.chunk(0).dictionary
    codes = _numbers(pa.chunked_array([chunk.indices for chunk in column.chunks]), len(dictionary))
    return codes.astype(np.int32, copy=False), [str(name) for name in dictionary.to_pylist()] + [missing]


def _numbers(column: pa.ChunkedArray, null: Any) -> np.ndarray:
    """Return an integer column as one numpy array, nulls replaced by ``null``."""
    return (pc.fill_null(column, null) if column.null_count else column).to_numpy()


def _position(names: list[str], name: str) -> int:
    return names.index(name) if name in names[:-1] else -1


def _columns(table: pa.Table, metric: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Return the report's columns as numpy arrays, and the status names.

    ``status`` holds status codes where any row is not ``ok``, and is left out otherwise.
    """
    status, statuses = _codes(table["status"], missing="missing")
    columns = {
        "steps": _numbers(table["step"], -1),
        "values": _floats(table[metric]),
        "loss": _floats(table["loss"]),
    }
    if np.any(status != _position(statuses, "ok")):
        columns["status"] = status
    return columns, statuses


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy()


def _series(layer: str, space: str, cols: dict[str, np.ndarray], statuses: list[str]) -> Series:
    steps, values, loss = cols["steps"], cols["values"], cols["loss"]
    if steps.size > 1 and np.any(steps[1:] < steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, values, loss = steps[order], values[order], loss[order]
    repeated = 0
    if steps.size > 1 and np.any(steps[1:] == steps[:-1]):  # the later row of a step wins
        last = np.r_[steps[1:] != steps[:-1], True]
        repeated = int(steps.size - np.count_nonzero(last))
        steps, values, loss = steps[last], values[last], loss[last]
    return Series(layer, space, steps, values, loss, _problems(cols.get("status"), statuses), repeated)


def _problems(codes: np.ndarray | None, statuses: list[str]) -> tuple[tuple[str, int], ...]:
    """Count each status other than ``ok`` among ``codes``, most frequent first."""
    if codes is None:
        return ()
    counts = np.bincount(codes, minlength=len(statuses))
    ok = _position(statuses, "ok")
    if ok >= 0:
        counts[ok] = 0
    order = np.argsort(-counts, kind="stable")
    return tuple((statuses[i], int(counts[i])) for i in order if counts[i])


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


def _assemble(
    run_dir: str, selection: Selection, runs: list[dict], metric: str, series: list[Series], tables: dict,
    extras: dict | None = None,
) -> Report:
    ordered = sorted(runs, key=lambda run: str(run.get("started", "")))
    info = selection.runs[-1]
    notes = _problem_notes(series) + _run_notes(selection, ordered)
    return Report(
        run_dir, info, tuple(str(r.get("run_id")) for r in ordered), metric,
        layers=tuple(dict.fromkeys(s.layer for s in series)), series=tuple(series),
        notes=tuple(notes), **analysis.frames(tables, str(info["run_id"]), metric), **(extras or {}),
    )  # fmt: skip


def _problem_notes(series: list[Series]) -> list[str]:
    """Return one note per series with non-finite samples, a status other than ``ok``, or steps
    logged twice."""
    notes = []
    for item in series:
        nonfinite = int((~np.isfinite(item.values)).sum())
        if nonfinite or item.problems:
            why = ", ".join(f"{status} x{count}" for status, count in item.problems)
            notes.append(
                f"{display_name(item.layer)} ({item.space}): {nonfinite} of {item.values.size} "
                f"samples not finite" + (f"; status {why}" if why else "")
            )
        if item.repeated:
            notes.append(
                f"{display_name(item.layer)} ({item.space}): {item.repeated} rows at steps logged again "
                "later were left out (the later row of each step is shown): rows of several ranks? "
                "report one with rank="
            )
    return notes


def _run_notes(selection: Selection, runs: list[dict]) -> list[str]:
    notes = []
    if selection.stitched:
        joins = ", ".join(f"{run.get('run_id')} from step {start}" for run, start in
                          zip(selection.runs[1:], selection.until[:-1]))  # fmt: skip
        notes.append(f"runs {', '.join(selection.run_ids)} stitched as one run (resumed: {joins})")
    if selection.others:
        notes.append(f"this directory holds {len(runs)} runs; pick another ({', '.join(selection.others)}) "
                     "with --run-id")  # fmt: skip
    return notes
