"""Online jump and phase detection over the logged series, reported in training steps.

One :class:`ndtracker.detect.OnlineDetector` per (layer, space) series of ``stable_rank``, fed one
value per sample, with its step where the detector takes one (samples may be unevenly spaced:
``every`` can be a schedule). The detectors' periodic recomputations are staggered (each series
gets its own ``stride``, for detectors that take one) so that they do not all fall on the same
training step. A detector that fails is dropped and warned about once; logging goes on. Each event
is also an :class:`OnlineEvent`, the record handed to ``Tracker(on_event=...)``.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ndtracker import detect
from ndtracker.detect import Jump

Warn = Callable[[str, str, str], None]
log = logging.getLogger("ndtracker")

METRIC = "stable_rank"  # the series the online detector watches
BASE_STRIDE = 512  # values between two recomputations (OnlineDetector's default, 8 * max_window)
STRIDE_STAGGER = 7  # each further series recomputes this many values later than the one before
STAGGER_SLOTS = 64  # strides cycle after this many series, so none waits much longer than the base


@dataclass(frozen=True)
class OnlineEvent:
    """A jump or phase change found online, as ``Tracker(on_event=...)`` receives it.

    Attributes:
        step: The training step where the jump or the new phase starts (not the step it was found
            at: the detector needs a few samples after it).
        layer: Module name as in ``model.named_modules()``.
        space: ``"activation"`` or ``"weight"``.
        metric: The series watched (``"stable_rank"``).
        kind: ``"jump"`` or ``"phase"``.
        direction: +1 for a rise, -1 for a drop (jumps); None for phase changes.
        size: The shift, after minus before, in the metric's units (jumps); None for phases.
        relative_size: ``size`` over the level before it (-0.5: the metric halved); None for phases.
        phase: ``"collapse"``, ``"expansion"`` or ``"stabilization"``, the phase that starts
            (phase changes); None for jumps.
        z: The jump's significance, its size over the noise sd; None for phases.
    """

    step: int
    layer: str
    space: str
    metric: str
    kind: Literal["jump", "phase"]
    direction: int | None = None
    size: float | None = None
    relative_size: float | None = None
    phase: str | None = None
    z: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> OnlineEvent:
        """The record of an event row (as :class:`SeriesDetectors` returns them)."""
        names = ("step", "layer", "space", "metric", "kind", "direction", "size", "relative_size", "phase", "z")
        return cls(**{name: row.get(name) for name in names})


def detector_factory(enabled: bool) -> Any:
    """The online detector class when detection is on, else None."""
    return detect.OnlineDetector if enabled else None


class SeriesDetectors:
    """One online detector per (layer, space) series, made at the series' first row.

    Args:
        factory: The detector class (called with keyword options), or None for no detection.
        warn: ``warn(layer, space, message)``, the Tracker's warn-once.
    """

    def __init__(self, factory: Any, warn: Warn) -> None:
        self._factory, self._warn = factory, warn
        self._detectors: dict[tuple[str, str], StepDetector | None] = {}

    def feed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feed each row's value to its series' detector; the events that became final."""
        events: list[dict[str, Any]] = []
        for row in rows if self._factory is not None else []:
            key = (row["layer"], row["space"])
            events += [_located(event, key) for event in self._feed(key, row)]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """End every series; the events still pending (phase changes found at the end)."""
        events: list[dict[str, Any]] = []
        for key, detector in self._detectors.items():
            if detector is not None:
                events += [_located(event, key) for event in detector.finish()]
        return events

    def _feed(self, key: tuple[str, str], row: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed the series' detector; one that fails is dropped and warned about once."""
        if key not in self._detectors:
            self._detectors[key] = StepDetector(self._new_detector(), METRIC)
        detector = self._detectors[key]
        value = math.nan if row[METRIC] is None else row[METRIC]
        try:
            return [] if detector is None else detector.feed(row["step"], value)
        except Exception as error:
            self._detectors[key] = None
            self._warn(*key, f"online detection stopped: {error!r}")
            return []

    def _new_detector(self) -> Any:
        slot = len(self._detectors) % STAGGER_SLOTS
        if not _accepts(self._factory, "stride"):
            return self._factory()
        return self._factory(stride=BASE_STRIDE + STRIDE_STAGGER * slot)


def _located(event: dict[str, Any], key: tuple[str, str]) -> dict[str, Any]:
    return {**event, "layer": key[0], "space": key[1]}


class StepDetector:
    """An online detector over one series that reports events in training steps, not indices.

    The detector is given each value's step where its ``update`` takes one (``update(value,
    step=...)``, checked once here); events are placed at the step they carry, else at the step of
    their index (:class:`StepAxis`), so unevenly spaced samples are placed right either way.
    """

    def __init__(self, detector: Any, metric: str) -> None:
        self._detector, self._metric, self._steps = detector, metric, StepAxis()
        self._with_step = _accepts(detector.update, "step")

    def feed(self, step: int, value: float) -> list[dict[str, Any]]:
        """Feed the value sampled at ``step``; the events that became final, as event rows."""
        self._steps.append(step)
        events = self._detector.update(value, step=step) if self._with_step else self._detector.update(value)
        return [self._row(event) for event in events]

    def finish(self) -> list[dict[str, Any]]:
        """End the series; its remaining events, as event rows."""
        return [self._row(event) for event in self._detector.finish()]

    def _row(self, event: Any) -> dict[str, Any]:
        """An event row: a :class:`~ndtracker.detect.Jump` or a phase change (``kind``)."""
        step = getattr(event, "step", None)
        row = {"step": self._steps[event.index] if step is None else int(step), "metric": self._metric}
        if isinstance(event, Jump):
            return row | {"kind": "jump", "direction": int(event.direction), "size": float(event.size),
                          "relative_size": _relative_size(event), "z": float(event.z), "phase": None}  # fmt: skip
        return row | {"kind": "phase", "direction": None, "size": None, "relative_size": None, "z": None,
                      "phase": str(event.kind)}  # fmt: skip


def _relative_size(jump: Jump) -> float:
    """The jump's size over the level before it (the detector's own figure where it gives one)."""
    relative = getattr(jump, "relative_size", math.nan)
    if not math.isnan(relative):
        return float(relative)
    before = float(getattr(jump, "before", math.nan))
    return float(jump.size) / abs(before) if before and not math.isnan(before) else math.nan


def _accepts(function: Any, name: str) -> bool:
    """Whether ``function`` (a class: its constructor) takes a keyword argument ``name``."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class StepAxis:
    """The training step of each sample of a series, stored as arithmetic runs.

    Samples are usually evenly spaced, so memory grows with the number of irregularities (a
    missed sample, a change of cadence), not with the run's length, and any index, however old
    (a phase change found at ``finish()``), still maps to its step.
    """

    def __init__(self) -> None:
        self._runs: list[list[int]] = []  # [first index, first step, stride, count]
        self._count = 0

    def append(self, step: int) -> None:
        """Record the step of the next sample."""
        run = self._runs[-1] if self._runs else None
        if run is not None and run[3] == 1:
            run[2], run[3] = step - run[1], 2
        elif run is not None and step == run[1] + run[2] * run[3]:
            run[3] += 1
        else:
            self._runs.append([self._count, step, 0, 1])
        self._count += 1

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self._count:
            raise IndexError(f"sample index {index} out of range 0..{self._count - 1}")
        run = self._runs[bisect.bisect_right(self._runs, [index, math.inf]) - 1]
        return run[1] + run[2] * (index - run[0])


def _headline(event: dict[str, Any]) -> str:
    """What happened, without where: ``jump up in stable_rank`` or ``stable_rank enters collapse``."""
    if event["kind"] == "jump":
        return f"jump {'up' if (event.get('direction') or 0) > 0 else 'down'} in {event['metric']}"
    return f"{event['metric']} enters {event.get('phase')}"


def describe_event(event: dict[str, Any]) -> str:
    """One log line for an event row."""
    where = f"{event['layer']} ({event['space']}) step {event['step']}"
    if event["kind"] == "jump":
        relative = event.get("relative_size")
        share = "" if relative is None or math.isnan(relative) else f" ({relative:+.0%})"
        return f"{_headline(event)} at {where}: size {event.get('size'):.3g}{share}"
    return f"{_headline(event)} at {where}"


GROUPED = 3
"""More events than this of one kind, metric and step (a collapse in every layer at once) log as one line."""


def log_lines(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """The ``(level, message)`` lines that log ``events``: one per event, except that more than
    :data:`GROUPED` events with one headline (kind, direction or phase, metric) at one step make one
    line naming the first few series and how many more (a 40-layer model entering collapse at one
    step logs one warning, not 40)."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault((_headline(event), event["step"]), []).append(event)
    lines = []
    for (headline, step), group in groups.items():
        if len(group) <= GROUPED:
            lines += [(log_level(event), describe_event(event)) for event in group]
            continue
        named = ", ".join(f"{e['layer']} ({e['space']})" for e in group[:GROUPED])
        told = f"{headline} at step {step} in {len(group)} series: {named} and {len(group) - GROUPED} more"
        lines.append((log_level(group[0]), told))
    return lines


def log_level(event: dict[str, Any]) -> int:
    """WARNING for a collapse phase, INFO for every other event."""
    return logging.WARNING if event.get("kind") == "phase" and event.get("phase") == "collapse" else logging.INFO


class EventEmitter:
    """Log, write and hand each online event to ``on_event``, on the training thread.

    Args:
        writer: The run's writer (``append_events``).
        on_event: The user's callable, or None.
        warn: ``warn(layer, space, message)``, the Tracker's warn-once.
    """

    def __init__(self, writer: Any, on_event: Callable[[OnlineEvent], Any] | None, warn: Warn) -> None:
        self._writer, self._on_event, self._warn = writer, on_event, warn

    def emit(self, events: list[dict[str, Any]]) -> None:
        """Log, write and hand over ``events`` now; never raises."""
        if not events:
            return
        now = time.time()
        for event in events:
            event.setdefault("wall_time", now)
        for level, message in log_lines(events):
            log.log(level, "%s", message)
        try:
            self._writer.append_events(events)
        except Exception as error:
            self._warn("*", "events", f"could not log events: {error!r}")
        for event in events if self._on_event is not None else []:
            self._call(OnlineEvent.from_row(event))

    def _call(self, event: OnlineEvent) -> None:
        try:
            self._on_event(event)  # type: ignore[misc]
        except Exception as error:  # the user's callable never stops training either
            self._warn("*", "on_event", f"on_event raised {error!r} (further errors are not reported)")


def check_on_event(on_event: Any) -> Callable[[OnlineEvent], Any] | None:
    """``on_event``: a callable or None."""
    if on_event is not None and not callable(on_event):
        raise TypeError(f"on_event must be a callable taking an OnlineEvent, or None, got {on_event!r}")
    return on_event
