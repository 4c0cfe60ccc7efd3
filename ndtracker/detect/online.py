"""Detect jumps and phase changes one value at a time, with bounded memory and a bounded lag.

:class:`OnlineDetector` keeps the last ``buffer`` finite values and, every few values, runs the
offline detectors on them:

- **Jumps**: :func:`~ndtracker.detect.find_jumps`' test at its smallest window (``min_window``
  samples on each side) on the buffer; a jump is reported once ``2 * min_window`` values have
  followed it, so within :attr:`OnlineDetector.jump_lag` (20 with the defaults) values of its
  index. Online jumps approximate the offline ones: a jump that only the larger windows of
  ``find_jumps`` can see (a small shift in much noise) is found offline only, and the noise is
  estimated on the buffer rather than on the whole series.
- **Phases**: :func:`~ndtracker.detect.label_phases`' rule on the buffer; phases are recomputed every 8 values; a
  phase change is reported at the first check at which ``settle`` values have followed its start,
  so within :attr:`OnlineDetector.phase_lag` (36 with the defaults) values of its index for a change that the level shows within about
  ``settle`` values (a trend must move its level by ``1.25 * min_change`` before it is a trend at
  all). The first phase (index 0) is reported when it ends or turns out to be a trend. A slow
  trend, one that moves by less than ``min_change`` over the buffer, may be reported in pieces or
  not at all online; the offline labels see it.

The final offline labels of the whole series (:func:`~ndtracker.detect.label_phases`,
:func:`~ndtracker.detect.find_jumps`) refine the online events: same rule and same tests, but
with all the data on both sides of each position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from ndtracker.detect.jumps import Jump, _jump_candidates, _JumpOptions, _to_jump
from ndtracker.detect.level import _shared_median
from ndtracker.detect.phases import Phase, PhaseKind, _phases_of_finite, _PhaseOptions, _Where
from ndtracker.detect._robust import _BLOCK, _check, _clipped, _local_noise

__all__ = ["PhaseChange", "Event", "OnlineDetector"]

_CHECK_EVERY = 4  # values between two checks for jumps
_PHASE_EVERY = 8  # values between two checks for phase changes
_BUFFER = 512  # finite values kept
_SETTLE = 28  # values after a phase change before it is reported
_NOISE_EVERY = 16  # values between two estimates of the buffer's noise (where it is one estimate)
_NOISE_FROM = 256  # ... once the buffer holds this many values (before, each check estimates it)


@dataclass(frozen=True)
class PhaseChange:
    """An online event: a new phase starts at ``index``.

    Attributes:
        index: Position of the first sample of the new phase.
        kind: Kind of the new phase.
        previous: Kind of the phase before it, or None for the first phase.
        step: Training step of ``index`` where :meth:`OnlineDetector.update` was given steps.
    """

    index: int
    kind: PhaseKind
    previous: PhaseKind | None = None
    step: float | None = None


Event = Union[Jump, PhaseChange]


class _Buffer:
    """The last ``size`` finite values with their positions and steps, in arrays of twice that
    capacity so that the buffer is always one contiguous slice: appending costs O(1) amortised
    (the kept values move to the front once per ``size`` appends), and a check reads the buffer
    as read-only views without building arrays."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values, self._steps = np.empty(2 * size), np.empty(2 * size)
        self._positions = np.empty(2 * size, dtype=np.int64)
        self._start = self._stop = 0

    def __len__(self) -> int:
        return self._stop - self._start

    def append(self, value: float, position: int, step: float) -> None:
        """Add a value at the end, dropping the first one if the buffer is full."""
        if self._stop == self._values.size:
            kept = slice(self._start, self._stop)
            for array in (self._values, self._positions, self._steps):
                array[: len(self)] = array[kept]
            self._start, self._stop = 0, len(self)
        self._values[self._stop], self._positions[self._stop], self._steps[self._stop] = value, position, step
        self._stop += 1
        self._start = max(self._start, self._stop - self.size)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The values, their positions and their steps (NaN where none was given), read-only."""
        views = [array[self._start : self._stop] for array in (self._values, self._positions, self._steps)]
        for view in views:
            view.flags.writeable = False
        return views[0], views[1], views[2]


def _real(value: object, name: str = "value") -> float:
    """``value`` as a float (a Python or numpy number, a 0-d array or tensor); TypeError otherwise."""
    try:
        if not isinstance(value, (str, bytes)):
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    raise TypeError(f"OnlineDetector.update: {name} must be a real number, got {value!r}")


class OnlineDetector:
    """Detect jumps and phase changes one value at a time, with bounded memory and lag.

    Each :meth:`update` takes the next value (and optionally its training step); every 4 (8)
    values the detector checks the last ``buffer`` finite values for jumps (phase changes) (see
    :mod:`ndtracker.detect.online`). A jump is reported at most :attr:`jump_lag` values after its
    index, a phase change at most :attr:`phase_lag` values after its start (for a change the level
    shows within ``settle`` values). :meth:`phases` gives the phases of the reported changes; the
    offline :func:`label_phases` of the whole series refines them.

    Args:
        z_threshold, min_window, max_window, noise_window, min_size, min_relative_size: As in
            :func:`find_jumps` (online, only the ``min_window`` window is tested).
        min_change, trend_threshold, penalty, resolution, min_length, max_points: As in
            :func:`label_phases`.
        phase_lag: Kept for compatibility; no longer used (see ``settle``).
        stride: Kept for compatibility; no longer used: checks run every 4 values, so that the
            lags hold.
        settle: Values after a phase change before it is reported (default 28; in [8, 4096]).
            Larger values report fewer provisional changes, later.
        buffer: Finite values kept and analysed (default 512; in [64, 65536]; at least
            ``4 * settle``).

    Raises:
        ValueError: An option is out of range.

    Example:
        >>> import numpy as np
        >>> detector = OnlineDetector()
        >>> series = np.r_[np.zeros(300), np.ones(300)] + np.random.default_rng(0).normal(0, 0.1, 600)
        >>> found = [(i, event) for i, value in enumerate(series) for event in detector.update(value)]
        >>> [(event.index, i) for i, event in found if isinstance(event, Jump)]
        [(300, 319)]
    """

    def __init__(
        self,
        *,
        z_threshold: float = _JumpOptions.z_threshold,
        min_window: int = _JumpOptions.min_window,
        max_window: int = _JumpOptions.max_window,
        noise_window: int = _JumpOptions.noise_window,
        min_size: float = _JumpOptions.min_size,
        min_relative_size: float = _JumpOptions.min_relative_size,
        min_change: float = _PhaseOptions.min_change,
        trend_threshold: float = _PhaseOptions.trend_threshold,
        penalty: float = _PhaseOptions.penalty,
        resolution: float = _PhaseOptions.resolution,
        min_length: int = _PhaseOptions.min_length,
        max_points: int = _PhaseOptions.max_points,
        phase_lag: int = 1024,
        stride: int | None = None,
        settle: int = _SETTLE,
        buffer: int = _BUFFER,
    ) -> None:
        self._full_options = _JumpOptions(z_threshold, min_window, max_window, noise_window, min_size, min_relative_size)
        self._jump_options = _JumpOptions(z_threshold, min_window, min_window, noise_window, min_size, min_relative_size)
        self._phase_options = _PhaseOptions(min_change, trend_threshold, penalty, resolution, min_length, max_points)
        _check("phase_lag", phase_lag, 0, 2**31, integer=True)
        self.stride = 8 * max_window if stride is None else stride
        _check("stride", self.stride, 1, 2**20, integer=True)
        _check("settle", settle, 8, 4096, integer=True)
        _check("buffer", buffer, max(64, 4 * settle), 2**16, integer=True)
        self.settle, self.buffer = settle, buffer
        self._buffer = _Buffer(buffer)
        self._count = 0  # values seen, finite or not
        self._finite = 0  # finite values seen
        self._has_steps = False
        self._jumps_decided = 0  # position from which jumps are still open
        self._reported: list[PhaseChange] = []
        self._finished = False
        self.skipped = 0
        self._noise: tuple[int, int, tuple[np.ndarray, np.ndarray]] | None = None  # (at, blocks, noise)

    @property
    def jump_lag(self) -> int:
        """Most finite values between a jump's index and the update that reports it."""
        return 2 * self._jump_options.min_window + _CHECK_EVERY

    @property
    def phase_lag(self) -> int:
        """Most finite values between a phase change's start and the update that reports it, for
        a change the level shows within ``settle`` values."""
        return self.settle + _PHASE_EVERY

    @property
    def lag(self) -> int:
        """The jump lag (:attr:`jump_lag`), kept for compatibility."""
        return self.jump_lag

    @property
    def horizon(self) -> int:
        """Finite values on each side of a position that the offline jump decision there uses."""
        return self._full_options.horizon

    @property
    def memory(self) -> int:
        """Values held: the buffer; bounded whatever the series length."""
        return len(self._buffer)

    def update(self, value: float, step: float | None = None) -> list[Event]:
        """Take the next value (non-finite values are skipped but keep their position).

        Args:
            value: The next value of the series.
            step: Its training step (optional; increasing); events then carry steps.

        Returns:
            The jumps (by index), then the phase changes, settled by this value (often none).

        Raises:
            TypeError: ``value`` or ``step`` is not a real number (the value is not counted).
            RuntimeError: After :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("OnlineDetector.update() called after finish(); create a new detector")
        value = _real(value)
        step_value = None if step is None else _real(step, "step")
        self._count += 1
        if not math.isfinite(value):
            self.skipped += 1
            return []
        self._push(value, step_value)
        if self._finite % _CHECK_EVERY:
            return []
        return self._check(final=False)

    def finish(self) -> list[Event]:
        """Report what the lag held back, as if the series ended here; later calls return []."""
        if self._finished:
            return []
        self._finished = True
        return self._check(final=True)

    def phases(self) -> list[Phase]:
        """The phases of the reported phase changes (after :meth:`finish`, up to the last value)."""
        starts = [change.index for change in self._reported] + [self._count]
        return [
            Phase(start, stop, change.kind)
            for change, start, stop in zip(self._reported, starts, starts[1:])
            if stop > start
        ]

    def _push(self, value: float, step: float | None) -> None:
        self._buffer.append(value, self._count - 1, math.nan if step is None else step)
        self._has_steps = self._has_steps or step is not None
        self._finite += 1

    def _check(self, final: bool) -> list[Event]:
        """Run both detections on the buffer; return the newly settled events."""
        if not len(self._buffer):
            return self._phase_events([], final)
        y, positions, buffer_steps = self._buffer.arrays()
        first = int(positions[0])  # steps: those of the positions from the buffer's first on
        steps = np.full(self._count - first, math.nan) if self._has_steps else None
        if steps is not None:
            steps[positions - first] = buffer_steps
        opts = self._jump_options
        padded = _shared_median(y, opts.min_window)  # one running median for both clippings
        clipped = _clipped(y, opts.half_blocks, opts.min_window, padded)
        # the start's one-sided test only while its candidates could still be reported or
        # suppress one that could (within 2 * min_window of the buffer's start)
        edge = int(positions[min(positions.size - 1, 2 * opts.min_window)]) >= self._jumps_decided
        candidates = _jump_candidates(clipped, opts, edge, self._buffer_noise(clipped))
        events: list[Event] = self._jump_events(candidates, positions, steps, final)
        if not final and self._finite % _PHASE_EVERY:
            return events
        if y.size < self._phase_options.min_length:
            return events + self._phase_events([], final)
        where = _Where(positions, self._count, steps, first)
        phases = _phases_of_finite(y, candidates, where, self._phase_options, padded)
        return events + self._phase_events(phases, final)

    def _buffer_noise(self, clipped: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The buffer's local noise, estimated afresh every ``_NOISE_EVERY`` values where its
        blocks all share one context (the default buffer of 512 values is 8 blocks, the context 15):
        the estimate is then one value over the whole buffer, and it moves slowly as values come.
        None (estimate it now) while the buffer holds fewer than ``_NOISE_FROM`` values (an
        estimate from few values is still moving) or where it is longer."""
        half_blocks = self._jump_options.half_blocks
        blocks = -(-clipped.size // _BLOCK)
        if clipped.size < min(self.buffer, _NOISE_FROM) or blocks > 2 * half_blocks + 1:
            return None
        if self._noise is None or self._noise[1] != blocks or self._finite - self._noise[0] >= _NOISE_EVERY:
            self._noise = (self._finite, blocks, _local_noise(clipped, half_blocks))
        return self._noise[2]

    def _jump_events(self, candidates: list, positions: np.ndarray, steps: np.ndarray | None, final: bool) -> list[Event]:
        """Jumps at positions no later decision can change (``2 * min_window`` values seen after)."""
        limit = self._count if final else int(positions[max(0, positions.size - 2 * self._jump_options.min_window)])
        found = [c for c in candidates if self._jumps_decided <= positions[c.t] < limit]
        self._jumps_decided = max(self._jumps_decided, limit)
        return [_to_jump(c, positions, steps, int(positions[0])) for c in found]

    def _phase_events(self, phases: list[Phase], final: bool) -> list[Event]:
        """Phase changes that have settled (all remaining ones if final)."""
        last = self._reported[-1] if self._reported else None
        if last is None and not final and len(phases) < 2 and phases and phases[0].kind == "stabilization":
            return []  # the first phase is reported once it is a trend or has ended
        # the buffer's start is an edge of the data only once it has dropped values: phases that
        # start within 2 * settle of it are then not trusted (their start level is the edge's)
        dropped = self._finite > self.buffer
        first_usable = self._buffer.arrays()[1][0] + 2 * self.settle if self._reported and dropped else 0
        changes = [
            (p.start, p.kind) for p in phases
            if (last is None or (p.start > last.index and p.kind != last.kind)) and p.start >= first_usable
        ]  # fmt: skip
        if final:
            if not phases and last is None and self._count:
                changes = [(0, "stabilization")]
            return [self._report(index, kind) for index, kind in self._chain(changes, last)]
        if changes and self._count - changes[0][0] >= self.settle:
            return [self._report(*changes[0])]
        return []

    @staticmethod
    def _chain(changes: list[tuple[int, PhaseKind]], last: PhaseChange | None) -> list[tuple[int, PhaseKind]]:
        """Keep the changes that each change the kind of the one before."""
        out: list[tuple[int, PhaseKind]] = []
        kind = None if last is None else last.kind
        for index, new in changes:
            if new != kind:
                out.append((index, new))
                kind = new
        return out

    def _report(self, index: int, kind: PhaseKind) -> PhaseChange:
        previous = self._reported[-1].kind if self._reported else None
        index = 0 if previous is None else index
        step = self._step_of(index)
        change = PhaseChange(index, kind, previous, step)
        self._reported.append(change)
        return change

    def _step_of(self, index: int) -> float | None:
        if not self._has_steps:
            return None
        _, positions, steps = self._buffer.arrays()
        at = int(np.searchsorted(positions, index))  # the first position at or after index
        if at == positions.size or math.isnan(steps[at]):
            return None
        step = float(steps[at])
        return int(step) if step.is_integer() else step
