"""The training-loop shell: the Tracker, its options, layer selection, hooks, samples and events.

Everything here wires the pure stages together: :mod:`ndtracker.spectra` measures,
:mod:`ndtracker.store` writes, :mod:`ndtracker.detect` watches. Users need only :class:`Tracker`.
"""

from __future__ import annotations

from ndtracker.tracking.tracker import Tracker

__all__ = ["Tracker"]
