"""Detect jumps and phase changes one value at a time, with bounded memory and lag.

Every decision of :func:`~ndtracker.detect.find_jumps` about position ``t`` depends only on the
finite samples within a fixed horizon around ``t``, so :class:`OnlineDetector` reports exactly the
jumps of ``find_jumps`` on the same series; its final phases equal
:func:`~ndtracker.detect.label_phases`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from ndtracker.detect.jumps import Jump, _jump_candidates, _JumpOptions, _to_jump
from ndtracker.detect.phases import Phase, PhaseKind, _block_sums, _label_blocks, _PhaseOptions
from ndtracker.detect._robust import _BLOCK, _check, _clipped

__all__ = ["PhaseChange", "Event", "OnlineDetector"]


@dataclass(frozen=True)
class PhaseChange:
    """An online event: a new phase starts at ``index``.

    Attributes:
        index: Position of the first sample of the new phase.
        kind: Kind of the new phase.
        previous: Kind of the phase before it, or None for the first phase.
    """

    index: int
    kind: PhaseKind
    previous: PhaseKind | None = None


Event = Union[Jump, PhaseChange]


class _BlockAccumulator:
    """Block sums of a growing series, equal bit for bit to :func:`_block_sums` of the whole.

    Full blocks are kept as sums; the last, partial block as a stack of pairwise sums (a binary
    counter), so its sum is formed in the same order as the offline level-by-level merging.
    """

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.size = 1
        self.sums: list[float] = []
        self.starts: list[int] = []  # input position of each full block's first sample
        self.stack: list[tuple[int, float]] = []  # (level, sum) of the partial block, levels decreasing
        self.partial = 0  # samples in the partial block
        self.partial_start = 0

    def push(self, value: float, position: int) -> None:
        """Append one sample at input ``position``."""
        if not self.partial:
            self.partial_start = position
        self.stack.append((0, value))
        self.partial += 1
        while len(self.stack) > 1 and self.stack[-1][0] == self.stack[-2][0]:
            (level, right), (_, left) = self.stack.pop(), self.stack.pop()
            self.stack.append((level + 1, left + right))
        if self.partial == self.size:
            self.sums.append(self.stack[0][1])
            self.starts.append(self.partial_start)
            self.stack, self.partial = [], 0
        if len(self.sums) + bool(self.partial) > self.max_points:
            self._double()

    def _double(self) -> None:
        """Merge neighbouring blocks pairwise; an unpaired last full block joins the partial one."""
        level = self.size.bit_length() - 1
        if len(self.sums) % 2:
            self.stack = [(level, self.sums.pop())] + self.stack
            self.partial += self.size
            self.partial_start = self.starts.pop()
        self.sums = [a + b for a, b in zip(self.sums[::2], self.sums[1::2])]
        self.starts = self.starts[::2]
        self.size *= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (sums, counts, input positions of the first sample) of all blocks."""
        sums, counts, starts = list(self.sums), [float(self.size)] * len(self.sums), list(self.starts)
        if self.partial:
            total = self.stack[-1][1]
            for _, part in reversed(self.stack[:-1]):
                total = part + total
            sums.append(total)
            counts.append(float(self.partial))
            starts.append(self.partial_start)
        return np.array(sums), np.array(counts), np.array(starts, dtype=int)

    def __len__(self) -> int:
        return len(self.sums) + len(self.stack)


def _real(value: object) -> float:
    """``value`` as a float (a Python or numpy number, a 0-d array or tensor); TypeError otherwise."""
    try:
        if not isinstance(value, (str, bytes)):
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    raise TypeError(f"OnlineDetector.update: value must be a real number, got {value!r}")


class OnlineDetector:
    """Detect jumps and phase changes one value at a time, with bounded memory and lag.

    Each :meth:`update` takes the next value; every ``stride`` finite values the detector runs
    :func:`find_jumps` on a buffer of recent values and reports the jumps whose decision can no
    longer change (all data within ``horizon`` on each side seen). These are exactly the jumps of
    :func:`find_jumps` on the whole series, reported at most ``lag`` values late. Settled values
    (outliers clipped) are summarised in at most ``max_points`` blocks for the phases; a phase
    change is reported once it lies ``phase_lag`` values inside the settled data. Early phase
    changes are provisional; after :meth:`finish`, :meth:`phases` equals :func:`label_phases` of
    the whole series.

    Args:
        z_threshold, min_window, max_window, noise_window, min_size: As in :func:`find_jumps`.
        min_change, trend_threshold, penalty, resolution, min_length, max_points: As in
            :func:`label_phases`.
        phase_lag: Values between a phase change and the end of the settled data before it is
            reported (default 1024; >= 0). Phases are recomputed every ``max(stride, phase_lag // 2)``
            settled values.
        stride: Finite values between two runs of the detection (default ``8 * max_window``). A
            run takes tens of milliseconds; detectors fed in lockstep (one per layer) can be given
            different strides so that their runs do not coincide.

    Raises:
        ValueError: An option is out of range.

    Example:
        >>> import numpy as np
        >>> detector = OnlineDetector()
        >>> series = np.r_[np.zeros(3000), np.ones(3000)] + np.random.default_rng(0).normal(0, 0.1, 6000)
        >>> events = [event for value in series for event in detector.update(value)]
        >>> events += detector.finish()
        >>> [(event.index, type(event).__name__) for event in events if isinstance(event, Jump)]
        [(3000, 'Jump')]
    """

    def __init__(
        self,
        *,
        z_threshold: float = _JumpOptions.z_threshold,
        min_window: int = _JumpOptions.min_window,
        max_window: int = _JumpOptions.max_window,
        noise_window: int = _JumpOptions.noise_window,
        min_size: float = _JumpOptions.min_size,
        min_change: float = _PhaseOptions.min_change,
        trend_threshold: float = _PhaseOptions.trend_threshold,
        penalty: float = _PhaseOptions.penalty,
        resolution: float = _PhaseOptions.resolution,
        min_length: int = _PhaseOptions.min_length,
        max_points: int = _PhaseOptions.max_points,
        phase_lag: int = 1024,
        stride: int | None = None,
    ) -> None:
        self._jump_options = _JumpOptions(z_threshold, min_window, max_window, noise_window, min_size)
        self._phase_options = _PhaseOptions(
            min_change, trend_threshold, penalty, resolution, min_length, max_points
        )
        _check("phase_lag", phase_lag, 0, 2**31, integer=True)
        self.phase_lag = phase_lag
        self.stride = 8 * max_window if stride is None else stride
        _check("stride", self.stride, 1, 2**20, integer=True)
        self._values: list[float] = []  # finite values from compressed index ``_offset`` on
        self._positions: list[int] = []
        self._offset = 0
        self._count = 0  # values seen, finite or not
        self._decided = 0  # compressed index below which jumps and clipped values are settled
        self._blocks = _BlockAccumulator(max_points)
        self._reported: list[PhaseChange] = []
        self._settled_end = 0  # input position after the last settled value
        self._phases_at = 0  # settled end when the phases were last computed
        self._previous: list[Phase] = []  # phases found by the last computation
        self._finished = False
        self.skipped = 0

    @property
    def horizon(self) -> int:
        """Finite values on each side of a position that a jump decision there depends on."""
        return self._jump_options.horizon

    @property
    def lag(self) -> int:
        """Most finite values a jump is reported after the value that shows it."""
        return self.horizon + self.stride

    @property
    def memory(self) -> int:
        """Values held: the buffer plus the phase blocks; bounded whatever the series length."""
        return len(self._values) + len(self._blocks)

    def update(self, value: float) -> list[Event]:
        """Take the next value (non-finite values are skipped but keep their position).

        Returns:
            The jumps (by index), then the phase changes, settled by this value (often none).

        Raises:
            TypeError: ``value`` is not a real number (it is not counted).
            RuntimeError: After :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("OnlineDetector.update() called after finish(); create a new detector")
        value = _real(value)
        self._count += 1
        if not math.isfinite(value):
            self.skipped += 1
            return []
        self._values.append(value)
        self._positions.append(self._count - 1)
        finite = self._offset + len(self._values)
        if finite - self._decided < self.horizon + self.stride:
            return []
        return self._advance(finite - self.horizon)

    def finish(self) -> list[Event]:
        """Report what the lag held back, as if the series ended here; later calls return []."""
        if self._finished:
            return []
        self._finished = True
        events = self._advance(self._offset + len(self._values), final=True)
        return events + self._phase_events(final=True)

    def phases(self) -> list[Phase]:
        """Phases of the settled values so far; after :meth:`finish`, those of the whole series."""
        sums, counts, starts = self._blocks.arrays()
        end = self._count if self._finished else self._settled_end
        if counts.sum() < self._phase_options.min_length:
            return [Phase(0, end, "stabilization")] if end else []
        return _label_blocks(sums, counts, starts, end, self._phase_options)

    def _advance(self, limit: int, final: bool = False) -> list[Event]:
        """Settle compressed indices ``[_decided, limit)``: report their jumps, push their clipped
        values to the phase blocks, drop what no later decision needs."""
        opts = self._jump_options
        clipped = _clipped(np.array(self._values), opts.half_blocks, opts.min_window)
        start, stop = self._decided - self._offset, limit - self._offset
        positions = np.array(self._positions)
        events: list[Event] = [
            _to_jump(c, positions) for c in _jump_candidates(clipped, opts) if start <= c.t < stop
        ]
        self._settle(clipped, start, stop)
        self._decided = limit
        self._forget(limit - self.horizon)
        if final or self._settled_end - self._phases_at < max(self.stride, self.phase_lag // 2):
            return events
        self._phases_at = self._settled_end
        return events + self._phase_events(final=False)

    def _settle(self, clipped: np.ndarray, start: int, stop: int) -> None:
        """Push the clipped values at buffer indices ``[start, stop)`` to the phase blocks."""
        for i in range(start, stop):
            self._blocks.push(float(clipped[i]), self._positions[i])
        if stop > start:
            self._settled_end = self._positions[stop - 1] + 1

    def _forget(self, needed: int) -> None:
        """Drop buffered values before compressed index ``needed``, keeping whole blocks."""
        drop = needed // _BLOCK * _BLOCK - self._offset  # the buffer stays aligned to blocks
        if drop > 0:
            del self._values[:drop], self._positions[:drop]
            self._offset += drop

    def _phase_events(self, final: bool) -> list[Event]:
        """Report the phase changes that lie ``phase_lag`` inside the settled data and were found
        by the previous computation too (all remaining ones if final).

        A change is reported once: later ones must start ``min_length`` after the last reported
        one and change its kind.
        """
        phases, previous = self.phases(), self._previous
        self._previous = phases
        known = len(self._reported)
        first = (final or len(phases) > 1) and self._settled(phases[: 2 - final], previous, final)
        if not self._reported and phases and first:
            self._reported.append(PhaseChange(0, phases[0].kind))
        for phase in phases[1:] if self._reported else []:
            if not self._settled([phase], previous, final):
                break
            last = self._reported[-1]
            if phase.start > last.index + self._phase_options.min_length and phase.kind != last.kind:
                self._reported.append(PhaseChange(phase.start, phase.kind, last.kind))
        return list(self._reported[known:])

    def _settled(self, phases: list[Phase], previous: list[Phase], final: bool) -> bool:
        """Whether all ``phases`` (at least one) start ``phase_lag`` inside the settled data and
        ``previous`` has a phase of the same kind starting within ``min_length`` of each."""
        tolerance, cutoff = self._phase_options.min_length, self._settled_end - self.phase_lag
        near = (
            any(p.kind == q.kind and abs(p.start - q.start) <= tolerance for q in previous) for p in phases
        )
        return final or (len(phases) > 0 and all(p.start <= cutoff for p in phases) and all(near))
