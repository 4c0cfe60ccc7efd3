"""The report's class-geometry and condensation tables: read from the logs, phases detected.

Torch-free and matplotlib-free (the figures are drawn by :mod:`~ndtracker.reports.class_figures`,
only when a page is made). The ``classes`` table (written when labels are passed to
``Tracker.step``) gives one series per layer and statistic; the weight rows' ``condensation``
and ``directions`` columns (``Tracker(..., condensation=True)``) one per layer and column. Phases
of every series come from the same detector as the spectra's (:func:`ndtracker.detect.label_phases`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndtracker import detect, store

__all__ = [
    "CLASS_STATISTICS", "CONDENSATION_COLUMNS", "PHASE_COLUMNS", "class_tables", "class_phases", "depth_profile",
]  # fmt: skip

CLASS_STATISTICS: tuple[str, ...] = (
    "nc1", "radius", "dimension", "center_alignment", "axes_alignment", "ncc_accuracy",
)  # fmt: skip
CONDENSATION_COLUMNS: tuple[str, ...] = ("condensation", "directions")
PHASE_COLUMNS = ["layer", "statistic", "start_step", "end_step", "kind", "samples", "change", "relative_change"]
_CLASS_COLUMNS = ["step", "layer", "classes", "skipped_classes", *CLASS_STATISTICS, "rows", "status"]


def class_tables(
    run_dir: str | Path, run_ids: list[str], info: dict[str, Any], layers: Sequence[str],
    rank: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``classes``, ``condensation`` and ``class_phases`` tables of one run's report.

    Args:
        run_dir: The run directory.
        run_ids: The report's run, with the runs it resumes (read as one).
        info: The latest run's ``run.json`` entry (``options.condensation`` says whether the
            metrics are read again for the condensation columns).
        layers: The report's layers, in depth order: rows of other layers are left out, and the
            tables come in this order (then by step).
        rank: The rank whose weight rows give the condensation columns (see
            `~ndtracker.reports.report`); the classes table has no rank column.

    Returns:
        ``classes`` (the classes table's rows), ``condensation`` (``step``, ``layer``,
        ``condensation``, ``directions`` of the weight rows that have them) and ``class_phases``
        (:func:`class_phases` of both); empty frames, with their columns, when the run logged none.
    """
    classes = _ordered(store.load(run_dir, run_id=run_ids, table="classes", columns=_CLASS_COLUMNS), layers)
    if info.get("options", {}).get("condensation"):
        condensation = _condensation(run_dir, run_ids, layers, rank)
    else:
        condensation = pd.DataFrame({"step": pd.Series([], dtype="int64"), "layer": pd.Series([], dtype=str),
                                     **{c: pd.Series([], dtype="float64") for c in CONDENSATION_COLUMNS}})
    phases = pd.concat([
        class_phases(classes, CLASS_STATISTICS), class_phases(condensation, CONDENSATION_COLUMNS),
    ], ignore_index=True)  # fmt: skip
    return {"classes": classes, "condensation": condensation, "class_phases": phases}


def _condensation(
    run_dir: str | Path, run_ids: list[str], layers: Sequence[str], rank: int | None
) -> pd.DataFrame:
    columns = ["step", "layer", "space", *CONDENSATION_COLUMNS]
    table = store.read_table(run_dir, run_id=run_ids, columns=columns, rank=rank)
    frame = table.filter(table["condensation"].is_valid()).drop_columns(["space"])
    return _ordered(frame.to_pandas().astype({"layer": str}), layers)


def _ordered(frame: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(layers)}
    frame = frame[frame["layer"].isin(rank)]
    order = np.lexsort((frame["step"].to_numpy(), frame["layer"].map(rank).to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def class_phases(frame: pd.DataFrame, statistics: Sequence[str]) -> pd.DataFrame:
    """Phases of each layer's series of each statistic, in training steps.

    Args:
        frame: Rows with ``step``, ``layer`` and the ``statistics`` columns, sorted by layer and step.
        statistics: The columns to analyse.

    Returns:
        One row per phase (:data:`PHASE_COLUMNS`); series with no finite value have none.
    """
    rows: list[dict[str, Any]] = []
    for layer, group in frame.groupby("layer", sort=False):
        steps = group["step"].to_numpy(np.int64)
        for statistic in statistics:
            values = group[statistic].to_numpy(np.float64, na_value=np.nan)
            rows += [_phase_row(layer, statistic, steps, phase) for phase in _phases(values)]
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def _phases(values: np.ndarray) -> list[detect.Phase]:
    if not np.isfinite(values).any():
        return []
    with warnings.catch_warnings():  # NaN samples (skipped classes, mismatches) are in the table
        warnings.filterwarnings("ignore", message=".*non-finite", category=RuntimeWarning)
        try:
            return detect.label_phases(values)
        except ZeroDivisionError:  # the detector on an all-zero series (no condensed pair at all)
            return []


def _phase_row(layer: str, statistic: str, steps: np.ndarray, phase: detect.Phase) -> dict[str, Any]:
    return {
        "layer": layer, "statistic": statistic, "start_step": int(steps[phase.start]),
        "end_step": int(steps[phase.stop - 1]), "kind": str(phase.kind),
        "samples": int(phase.stop - phase.start), "change": float(phase.change),
        "relative_change": float(phase.relative_change),
    }  # fmt: skip


def depth_profile(classes: pd.DataFrame, layers: Sequence[str], count: int = 4) -> pd.DataFrame:
    """NC1 of every layer at ``count`` sampled steps spread from first to last (layers as columns).

    Only steps at which every listed layer with class rows has one are chosen.
    """
    present = [layer for layer in layers if (classes["layer"] == layer).any()]
    wide = classes.pivot_table(index="step", columns="layer", values="nc1", aggfunc="first", dropna=False)
    wide = wide.reindex(columns=present).dropna()
    if wide.empty:
        return wide
    picks = np.unique(np.linspace(0, len(wide) - 1, min(count, len(wide))).round().astype(int))
    return wide.iloc[picks]
