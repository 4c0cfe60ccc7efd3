"""The training-loop shell: the Tracker, its options, layer selection, hooks, samples and events.

Everything here wires the pure stages together: :mod:`ndtracker.spectra` measures,
:mod:`ndtracker.store` writes, :mod:`ndtracker.detect` watches. Users need only :class:`Tracker`;
:class:`OnlineEvent` is what ``on_event`` receives, :class:`Probe` passes a probe batch (its
inputs, positional and keyword, and optionally its labels; also ``ndtracker.Probe``), :class:`Schedule` is a checked ``every``.
"""

from __future__ import annotations

from ndtracker.tracking.events import OnlineEvent
from ndtracker.tracking.probe import Probe
from ndtracker.tracking.schedule import Schedule
from ndtracker.tracking.tracker import Tracker

__all__ = ["Tracker", "OnlineEvent", "Probe", "Schedule"]
