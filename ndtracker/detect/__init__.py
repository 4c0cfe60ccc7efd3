"""Find jumps, anomalies and phases in a 1-D series, offline and online; pure numpy.

The one import path for detection; each concept lives in its own module:

- :mod:`ndtracker.detect.jumps`: :func:`find_jumps` (persistent level shifts, as :class:`Jump` records)
  and :func:`find_anomalies` (isolated outliers).
- :mod:`ndtracker.detect.phases`: :func:`label_phases` (contiguous :class:`Phase` records of collapse,
  expansion and stabilization).
- :mod:`ndtracker.detect.online`: :class:`OnlineDetector`, fed one value at a time (bounded memory and
  lag), whose jumps equal :func:`find_jumps` and final phases :func:`label_phases` on the same
  series; it emits :class:`Jump` and :class:`PhaseChange` events.
- `_robust` and `_linefit`: the robust noise statistics and the
  least-squares line fits they share.

Indices are positions in the input: non-finite values count as positions but are skipped (never
interpolated), with a ``RuntimeWarning`` saying how many. Callers that know the step of each
position (the tracker, the report) translate indices to training steps.

Example:
    >>> import numpy as np
    >>> from ndtracker import detect
    >>> series = np.r_[np.full(300, 5.0), np.full(300, 9.0)] + np.random.default_rng(0).normal(0, 0.5, 600)
    >>> [(jump.index, jump.direction) for jump in detect.find_jumps(series)]
    [(300, 1)]
"""

from __future__ import annotations

from numpy.typing import ArrayLike

from ndtracker.detect.jumps import Jump, _jump_candidates, _JumpOptions, _to_jump, find_anomalies, find_jumps
from ndtracker.detect.level import _shared_median, smooth_level
from ndtracker.detect.online import Event, OnlineDetector, PhaseChange
from ndtracker.detect.phases import Phase, PhaseKind, _phases_of_finite, _PhaseOptions, _too_short, _Where, label_phases
from ndtracker.detect._robust import _check_steps, _clipped, _prepare

__all__ = [
    "Jump",
    "Phase",
    "PhaseKind",
    "PhaseChange",
    "Event",
    "find_jumps",
    "find_anomalies",
    "label_phases",
    "phases_and_jumps",
    "smooth_level",
    "OnlineDetector",
]


def phases_and_jumps(values: ArrayLike, steps: ArrayLike | None = None) -> tuple[list[Phase], list[Jump]]:
    """``(label_phases(values, steps), find_jumps(values, steps))`` with default options, the
    shared work (outlier clipping, jumps) done once.

    What a report asks of each series.

    Args:
        values: The series, shape ``(n,)``; non-finite values are skipped (with one warning).
        steps: Optional training step of each value, shape ``(n,)``, strictly increasing.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, or ``steps`` does not match it.
    """
    jump_options, phase_options = _JumpOptions(), _PhaseOptions()
    y, positions, n = _prepare(values, "phases_and_jumps")
    where = _Where(positions, n, _check_steps(steps, n, "phases_and_jumps"))
    padded = _shared_median(y, jump_options.min_window)  # both clippings start from it
    clipped = _clipped(y, jump_options.half_blocks, jump_options.min_window, padded)
    candidates = _jump_candidates(clipped, jump_options)
    jumps = [_to_jump(c, positions, where.steps) for c in candidates]
    if y.size < phase_options.min_length:
        return _too_short(n), jumps
    return _phases_of_finite(y, candidates, where, phase_options, padded), jumps
