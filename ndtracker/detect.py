"""Find jumps, anomalies and phases in a 1-D series, offline and online; pure numpy.

The one import path for detection; each concept lives in its own module:

- :mod:`ndtracker.jumps`: :func:`find_jumps` (persistent level shifts, as :class:`Jump` records)
  and :func:`find_anomalies` (isolated outliers).
- :mod:`ndtracker.phases`: :func:`label_phases` (contiguous :class:`Phase` records of collapse,
  expansion and stabilization).
- :mod:`ndtracker.online`: :class:`OnlineDetector`, fed one value at a time (bounded memory and
  lag), whose jumps equal :func:`find_jumps` and final phases :func:`label_phases` on the same
  series; it emits :class:`Jump` and :class:`PhaseChange` events.
- :mod:`ndtracker.robust` and :mod:`ndtracker.linefit`: the robust noise statistics and the
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

from ndtracker.jumps import Jump, find_anomalies, find_jumps
from ndtracker.online import Event, OnlineDetector, PhaseChange
from ndtracker.phases import Phase, PhaseKind, label_phases

__all__ = [
    "Jump",
    "Phase",
    "PhaseKind",
    "PhaseChange",
    "Event",
    "find_jumps",
    "find_anomalies",
    "label_phases",
    "OnlineDetector",
]
