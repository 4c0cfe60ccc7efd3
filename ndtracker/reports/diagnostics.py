"""Named conditions read from a run's curves, each with the layers and steps it concerns.

Following how the high-frequency dimensionality study reads its curves, over the series of one
space in depth order (pure numpy; a series needs :data:`Thresholds.min_samples` finite samples).
Each series is cut into four quarters of its samples, ``Q1..Q4``; with ``m(Q)`` the median of a
quarter and ``level`` the median of ``|values|`` over the run:

- ``early = (m(Q2) - m(Q1)) / level``, ``late = (m(Q4) - m(Q3)) / level``,
  ``total = (m(Q4) - m(Q1)) / level``;
- *expanding late*: ``late >= growth``; *plateaued*: ``|late| <= stall``.

The conditions (:data:`CONDITIONS`):

``collapsed``
    ``m(Q4) <= collapse_level`` (about one direction) in a layer wider than 2. Steps: from the
    first sample of the final stretch at or below the level, to the end.
``bottleneck``
    The layer expanded early (``early >= growth``), has plateaued, and a deeper layer of the same
    space is still expanding late. Steps: the second half of the run.
``unstable``
    The sample-to-sample change is typically large (median of ``|Δv| / level`` at least
    ``unstable_move``) and reverses often (at least ``reversals`` of consecutive changes flip
    sign). Steps: first to last sample with such a change.
``information_flow``
    Activation space only (how the study reads it; weight spectra start full at a random
    initialisation). With at least 4 layers: every layer of the first half of depth is
    saturated (plateaued, and not lower at the end than at the start: ``total >= -stall``), every
    layer of the second half has not expanded over the run (``total <= stall``) and sits below the lowest
    early layer (``m(Q4)``). Steps: the second half of the run.

A smooth healthy run (layers expand and settle together) triggers none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Series

__all__ = ["CONDITIONS", "DIAGNOSTIC_COLUMNS", "Thresholds", "diagnose", "empty_diagnostics"]

CONDITIONS: dict[str, str] = {
    "collapsed": "collapsed to about one direction: it passes on little more than a scalar (dead "
                 "units, a saturating nonlinearity or a learning rate too high can cause this)",
    "bottleneck": "stopped expanding while deeper layers still expand: it may be a bottleneck that "
                  "limits what the deeper layers receive (consider widening or normalising it)",
    "unstable": "expands and contracts by large amounts from sample to sample: unstable expansion, "
                "often a learning rate too high or an unstable optimiser state",
    "information_flow": "early layers are saturated while later layers do not expand: information "
                        "may not flow through the depth (vanishing signal; consider residual "
                        "connections or normalisation)",
}  # fmt: skip
"""Each condition's name and what it may mean."""

DIAGNOSTIC_COLUMNS = ["condition", "space", "metric", "layers", "first_step", "last_step", "meaning"]


@dataclass(frozen=True)
class Thresholds:
    """The numbers the conditions use (see the module docstring)."""

    collapse_level: float = 1.5
    growth: float = 0.2
    stall: float = 0.05
    unstable_move: float = 0.15
    reversals: float = 1 / 3
    min_samples: int = 8


@dataclass(frozen=True)
class _Shape:
    """One series summarised: quarters' medians relative to its level, and its steps."""

    layer: str
    steps: np.ndarray
    values: np.ndarray
    level: float
    early: float
    late: float
    total: float
    last: float


def empty_diagnostics() -> pd.DataFrame:
    """A diagnostics table with no rows."""
    return pd.DataFrame({name: pd.Series([], dtype="int64" if name.endswith("_step") else "object")
                         for name in DIAGNOSTIC_COLUMNS})  # fmt: skip


def diagnose(
    series: Sequence[Series],
    metric: str,
    widths: Mapping[tuple[str, str], int] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> pd.DataFrame:
    """Find the :data:`CONDITIONS` in a run's series.

    Args:
        series: One series per layer and space, in depth order.
        metric: The metric they hold (for the table).
        widths: ``(layer, space) -> width`` (the most directions the matrix can have); layers of
            width at most 2 are never ``collapsed``. Unknown widths count as wide.
        thresholds: The numbers the conditions use.

    Returns:
        One row per finding: ``condition``, ``space``, ``metric``, ``layers`` (a tuple of names),
        ``first_step``, ``last_step``, ``meaning`` (a sentence).
    """
    rows: list[dict] = []
    for space in dict.fromkeys(s.space for s in series):
        shapes = [shape for s in series if s.space == space if (shape := _shape(s, thresholds)) is not None]
        for condition, layers, first, last in _findings(shapes, space, widths or {}, thresholds):
            rows.append({"condition": condition, "space": space, "metric": metric, "layers": layers,
                         "first_step": first, "last_step": last,
                         "meaning": f"{', '.join(layers)} ({space}): {CONDITIONS[condition]}"})  # fmt: skip
    return pd.DataFrame(rows, columns=DIAGNOSTIC_COLUMNS) if rows else empty_diagnostics()


def _shape(item: Series, t: Thresholds) -> _Shape | None:
    keep = np.isfinite(item.values)
    values, steps = item.values[keep], item.steps[keep]
    if values.size < t.min_samples:
        return None
    level = float(np.median(np.abs(values)))
    if not level > 0:
        return None
    q = np.array_split(values, 4)
    m = [float(np.median(part)) for part in q]
    return _Shape(item.layer, steps, values, level, (m[1] - m[0]) / level, (m[3] - m[2]) / level,
                  (m[3] - m[0]) / level, m[3])  # fmt: skip


def _findings(shapes: list[_Shape], space: str, widths: Mapping, t: Thresholds) -> list[tuple]:
    found = []
    for depth, shape in enumerate(shapes):
        if shape.last <= t.collapse_level and widths.get((shape.layer, space), 3) > 2:
            found.append(("collapsed", (shape.layer,), _collapse_start(shape, t), int(shape.steps[-1])))
        deeper = [s for s in shapes[depth + 1 :] if s.late >= t.growth]
        if shape.early >= t.growth and abs(shape.late) <= t.stall and deeper:
            found.append(("bottleneck", (shape.layer,), _second_half(shape), int(shape.steps[-1])))
        span = _unstable_span(shape, t)
        if span is not None:
            found.append(("unstable", (shape.layer,), *span))
    flow = _information_flow(shapes, t) if space == "activation" else None
    if flow is not None:
        found.append(flow)
    return found


def _collapse_start(shape: _Shape, t: Thresholds) -> int:
    above = np.flatnonzero(shape.values > t.collapse_level)
    start = above[-1] + 1 if above.size else 0
    return int(shape.steps[min(start, shape.steps.size - 1)])


def _second_half(shape: _Shape) -> int:
    return int(shape.steps[shape.steps.size // 2])


def _unstable_span(shape: _Shape, t: Thresholds) -> tuple[int, int] | None:
    moves = np.diff(shape.values) / shape.level
    if np.median(np.abs(moves)) < t.unstable_move:
        return None
    signs = np.sign(moves[moves != 0])
    if signs.size < 2 or np.mean(signs[1:] != signs[:-1]) < t.reversals:
        return None
    large = np.flatnonzero(np.abs(moves) >= t.unstable_move)
    return int(shape.steps[large[0]]), int(shape.steps[large[-1] + 1])


def _information_flow(shapes: list[_Shape], t: Thresholds) -> tuple | None:
    if len(shapes) < 4:
        return None
    early, later = shapes[: len(shapes) // 2], shapes[len(shapes) // 2 :]
    if not all(abs(s.late) <= t.stall and s.total >= -t.stall for s in early):
        return None
    floor = min(s.last for s in early)
    if not all(s.total <= t.stall and s.last < floor for s in later):
        return None
    layers = tuple(s.layer for s in shapes)
    return ("information_flow", layers, _second_half(later[0]), int(max(s.steps[-1] for s in shapes)))
