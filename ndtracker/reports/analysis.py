"""Turn a report's series into its tables: phases, jumps and a summary, in training steps.

Detection runs offline on the full series of each layer and space with :func:`ndtracker.detect.
label_phases` and :func:`ndtracker.detect.find_jumps`; this module converts their positions to the
training steps of the samples, counts what is not finite, and can spread a large run over worker
processes. It imports no torch, and pandas only to build the tables: a worker process imports
just numpy and the detector.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ndtracker import detect

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.progress import Progress

    from ndtracker.reports.model import Series

PARALLEL_MIN_SAMPLES = 2_000_000  # below this, spawning worker processes costs more than it saves
PHASE_COLUMNS = [
    "layer", "space", "start_step", "end_step", "kind", "samples", "start_level", "end_level", "change",
    "relative_change",
]  # fmt: skip
JUMP_COLUMNS = ["layer", "space", "step", "direction", "size", "relative_size", "z", "before", "after"]


def analyse(series: list[Series], bar: Progress, workers: int) -> dict[str, list[dict]]:
    """Detect jumps and phases on each full series.

    Args:
        series: The series to analyse.
        bar: Progress bar to advance, one tick per series.
        workers: Processes to use for a run of at least ``PARALLEL_MIN_SAMPLES`` samples in all.

    Returns:
        Rows of the ``summary``, ``phases`` and ``jumps`` tables, in training steps.
    """
    tables: dict[str, list[dict]] = {"summary": [], "phases": [], "jumps": []}
    found = bar.track(_detect_all(series, workers), total=len(series), description="detecting phases")
    for item, (phases, jumps) in zip(series, found):
        tables["phases"] += [_phase_row(item, phase) for phase in phases]
        tables["jumps"] += [_jump_row(item, jump) for jump in jumps]
        tables["summary"].append(_summary_row(item, len(phases), len(jumps)))
    return tables


def frames(tables: dict[str, list[dict]], run_id: str, metric: str) -> dict[str, pd.DataFrame]:
    """Turn the rows of `analyse` into DataFrames with ``run_id`` and ``metric`` columns."""
    columns = {"summary": ["layer", "space"], "phases": PHASE_COLUMNS, "jumps": JUMP_COLUMNS}
    return {name: _frame(rows, columns[name], run_id, metric) for name, rows in tables.items()}


def _detect_all(series: list[Series], workers: int) -> Iterator[tuple[list, list]]:
    """Run detection in this process, or in ``workers`` spawned processes for large runs."""
    values = [item.values for item in series]
    steps = [item.steps for item in series]
    workers = min(workers, len(values))
    if workers <= 1 or sum(v.size for v in values) < PARALLEL_MIN_SAMPLES:
        yield from map(_detect, values, steps)
        return
    context = multiprocessing.get_context("spawn")  # no fork: the caller may run threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_detect, values, steps)


def _detect(values: np.ndarray, steps: np.ndarray) -> tuple[list, list]:
    if not np.isfinite(values).any():
        return [], []
    with warnings.catch_warnings():  # the report notes non-finite samples itself, once per series
        warnings.filterwarnings("ignore", message=".*non-finite", category=RuntimeWarning)
        return detect.phases_and_jumps(values, steps)


def _phase_row(series: Series, phase: detect.Phase) -> dict[str, Any]:
    return {
        "layer": series.layer, "space": series.space,
        "start_step": int(series.steps[phase.start]), "end_step": int(series.steps[phase.stop - 1]),
        "kind": str(phase.kind), "samples": int(phase.stop - phase.start),
        "start_level": float(phase.start_level), "end_level": float(phase.end_level),
        "change": float(phase.change), "relative_change": float(phase.relative_change),
    }  # fmt: skip


def _jump_row(series: Series, jump: detect.Jump) -> dict[str, Any]:
    return {
        "layer": series.layer, "space": series.space, "step": int(series.steps[jump.index]),
        "direction": "up" if jump.direction > 0 else "down", "size": float(jump.size),
        "relative_size": float(jump.relative_size), "z": float(jump.z), "before": float(jump.before), "after": float(jump.after),
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


def _frame(rows: list[dict], columns: list[str], run_id: str, metric: str) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else columns)
    frame.insert(0, "run_id", run_id)
    frame.insert(3, "metric", metric)
    return frame
