"""The swings of a smoothed level (its zig-zag) and the part of each swing where the level moves.

A swing ends at an extreme once the level has turned back from it by ``_SWING * min_change`` of
the extreme and by ``z`` noise sd of the difference. The scan is numpy work on stretches of the
level (running extrema with ``np.maximum.accumulate``): Python only loops over the turns, which
are few, and each stretch is scanned in chunks that double in size, so the cost is linear in the
series' length. A long swing is confirmed on the mean level of the first and last quarter of
the part where it moves (:meth:`_Scan.confirmed`), so a slow trend's noise is not read as turns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ndtracker.detect._robust import _median_of

_SWING = 1.25  # a swing must reach this many times min_change, so that trimming leaves min_change
_TRIM = 0.1  # trimming tolerance: this fraction of the swing ...
_TRIM_LEVEL = 0.4  # ... and at most this fraction of min_change of the level
_BAND = 1.0  # a trend ends (starts) within this many noise sd of the plateau's median level
_FLAT = 0.5  # an end part is flat if slower than this fraction of the moving part's pace
_EDGE = 4  # the last samples' levels have shrunk windows (down to one sample): not a final extreme
_CHUNK = 2048  # samples scanned at a time for a turn (doubling while none is found)
_WINDOW = 9  # samples in the level's window: its noise sd is that of a mean over about this many
_COARSE = 4  # a long swing is confirmed on mean levels over a quarter of its length at its two ends
_LONG = 32  # ... where a quarter is longer than this many samples (a few windows of the level)
_HALF = 0.5  # ... by this fraction of min_change


@dataclass(frozen=True)
class _Scan:
    """What the zig-zag needs of a level: the level, its noise sd and the thresholds."""

    level: np.ndarray
    sd: np.ndarray
    min_change: float
    z: float

    def turn(self, start: int, stop: int, direction: int) -> tuple[int, int] | None:
        """The first turn of the level after ``start`` (within ``[start, stop)``) while tracking
        its running maximum (``direction`` +1) or minimum (-1): ``(extreme, turn)`` with the
        index of the extreme it turns back from and the first index where it has turned, or None.
        """
        return self.first_turn(start, stop, (direction,))[1]

    def first_turn(self, start: int, stop: int, directions: tuple[int, ...]) -> tuple[int, tuple[int, int] | None]:
        """The earliest turn over ``directions`` (see :meth:`turn`): ``(its direction, turn)``,
        scanning chunks that double in size, each carrying the running extremum of the ones before."""
        size, lo = _CHUNK, start
        carried: dict[int, tuple[float, int] | None] = {d: None for d in directions}
        while True:
            end = min(stop, start + size)
            found = []
            for d in directions:
                turn, carried[d] = self._turn_in(lo, end, d, carried[d])
                if turn is not None:
                    found.append((d, turn))
            if found or end == stop:
                return min(found, key=lambda item: item[1][1]) if found else (0, None)
            lo, size = end, size * 2

    def _turn_in(
        self, lo: int, end: int, direction: int, carried: tuple[float, int] | None
    ) -> tuple[tuple[int, int] | None, tuple[float, int]]:
        """The first turn in ``[lo, end)`` given the running extremum ``carried`` (its value, times
        ``direction``, and index) of the samples scanned before ``lo`` (None: ``lo`` starts the
        scan); returns the turn or None, and the running extremum at ``end - 1``."""
        v = direction * self.level[lo:end]
        new = np.ones(v.size, bool)
        if carried is None:
            top = np.maximum.accumulate(v)
            new[1:] = v[1:] > top[:-1]
            before = lo
        else:
            top = np.maximum.accumulate(np.maximum(v, carried[0]))
            new[0] = v[0] > carried[0]
            new[1:] = v[1:] > top[:-1]
            before = carried[1]
        where = np.maximum.accumulate(np.where(new, np.arange(lo, end), before))
        threshold = np.maximum(
            _SWING * self.min_change * np.abs(self.level[where]), self.z * np.hypot(self.sd[where], self.sd[lo:end])
        )
        hits = np.flatnonzero((top - v >= threshold) & ~new)
        state = (float(top[-1]), int(where[-1]))
        return (None if hits.size == 0 else (int(where[hits[0]]), int(hits[0]) + lo)), state

    def swings(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """The zig-zag of ``level[lo:hi]``: swings ``(first extreme, last extreme, direction)``."""
        swings: list[tuple[int, int, int]] = []
        tracked, first = self.first_turn(lo, hi, (1, -1))
        if first is None:
            return swings
        direction, (pivot, start) = -tracked, first  # it turned back from its first high (low)
        while True:
            found = self.turn(start, hi, direction)
            if found is None:
                break
            extreme, start = found
            swings.append((pivot, extreme, direction))
            direction, pivot = -direction, extreme
        v = direction * self.level[start : max(start + 1, hi - _EDGE)]  # not a one-sample level at the end
        swings.append((pivot, start + int(np.argmax(v)), direction))
        return swings

    def confirmed(
        self, swings: list[tuple[int, int, int]], time: np.ndarray, rounded: int
    ) -> list[tuple[tuple[int, int, int], _Trend]]:
        """The swings whose move holds on the mean level of the first and last quarter of the
        part where they move (:func:`trim`; long swings only, :meth:`_holds`): over a long noisy
        stretch the level's extremes are its noise's extremes, and a swing between two of them (a
        slow trend's noise read as a counter-move) is no move of the mean level. An unconfirmed
        swing is merged with its neighbours (which move the other way: one swing from the first's
        start to the last's end), or dropped at the ends of the series; until all hold. Returns
        each confirmed swing with its trimmed part."""
        out = list(swings)
        trims: dict[tuple[int, int, int], _Trend] = {}  # each swing is trimmed once
        k = 0
        while k < len(out):
            if out[k] not in trims:
                trims[out[k]] = trim(self, time, out[k], rounded)
            moving = trims[out[k]]
            if self._holds(moving.start, moving.end, out[k][2]):
                k += 1
            elif 0 < k < len(out) - 1:
                out[k - 1 : k + 2] = [(out[k - 1][0], out[k + 1][1], out[k - 1][2])]
                k -= 1
            else:
                del out[k]
                k = max(0, k - 1)
        return [(swing, trims[swing]) for swing in out]

    def _holds(self, a: int, b: int, direction: int) -> bool:
        """Whether the level moves ``direction``-ward from ``a`` to ``b`` on its mean over the
        first and last ``r = (b - a) // _COARSE`` samples, by ``z`` noise sd of those means and half
        of ``min_change`` (the means lie an eighth of the way in, so a steady move keeps three
        quarters of its size between them); always where ``r`` is at most ``_LONG``."""
        r = (b - a) // _COARSE
        if r <= _LONG:
            return True
        ends = [(a, a + r), (b + 1 - r, b + 1)]
        means = [float(np.mean(self.level[lo:hi])) for lo, hi in ends]
        sds = [_median_of(self.sd[lo:hi]) * np.sqrt(_WINDOW / r) for lo, hi in ends]
        moved = direction * (means[1] - means[0])
        return moved >= max(_HALF * self.min_change * abs(means[0]), self.z * float(np.hypot(*sds)))


@dataclass(frozen=True)
class _Trend:
    """A trimmed swing: it moves over ``[start, end)``; ``pace`` is its mean rate of change (per
    step or sample) and ``tol_start``, ``tol_end`` the trimming tolerances at its two extremes."""

    start: int
    end: int
    pace: float
    tol_start: float
    tol_end: float


def _tolerance(size: float, level: float, min_change: float) -> float:
    """How close to a swing's extreme the level must come for the swing to have ended there."""
    return min(_TRIM * size, _TRIM_LEVEL * min_change * abs(level))


def trim(scan: _Scan, time: np.ndarray, swing: tuple[int, int, int], rounded: int) -> _Trend:
    """The part of a swing ``(a, b, direction)`` where the level moves.

    Its start is the last sample still within ``tol`` of the first extreme, its end the first
    sample within ``tol`` of the last extreme, ``tol`` the smaller of a tenth of the swing and
    ``0.4 * min_change`` of the level; then each is moved to where the level comes within
    ``_BAND`` noise sd of the plateau's median level (:func:`_settled_end`). An end part is cut
    off only if it is flat: slower than ``_FLAT`` of the pace of the part that moves (``time`` is
    the step, or position, of each sample), longer than ``rounded`` samples (shorter ones are the
    smoothing's rounding of a kink), and, if long, still on its mean level (:func:`_still`).
    """
    level, sd = scan.level, scan.sd
    a, b, direction = swing
    size = abs(level[b] - level[a])
    pace = size / max(time[b] - time[a], 1e-300)
    tol_a = _tolerance(size, level[a], scan.min_change)
    tol_b = _tolerance(size, level[b], scan.min_change)
    moved = direction * (level[a : b + 1] - level[a])
    s = _settled_start(level, sd, a, a + int(np.flatnonzero(moved <= tol_a)[-1]), b, direction)
    left = direction * (level[b] - level[s : b + 1])
    e = _settled_end(level, sd, s, s + int(np.flatnonzero(left <= tol_b)[0]), b, direction)
    core = abs(level[e] - level[s]) / max(time[e] - time[s], 1e-300)  # the pace where it moves
    flat_start = s - a > rounded and tol_a < _FLAT * core * (time[s] - time[a]) and _still(level, time, a, s, core)
    flat_end = b > e and tol_b < _FLAT * core * (time[b] - time[e]) and _still(level, time, e, b, core)
    s, e = (s if flat_start else a), (e if flat_end else b)
    return _Trend(s, max(e, s + 1), pace, tol_a, tol_b)


def _still(level: np.ndarray, time: np.ndarray, lo: int, hi: int, pace: float) -> bool:
    """Whether the end part ``[lo, hi]`` of a swing is flat on its mean level: its two halves'
    mean levels differ by less than ``_FLAT`` of ``pace`` over the time between their middles.
    Always for a part of ``4 * _LONG`` samples or fewer (there the extreme's tolerance decides);
    on a long part the extreme is a noise extreme, and a slow trend stays within its tolerance of
    it for long while the mean level moves on."""
    if hi - lo <= 4 * _LONG:
        return True
    mid = (lo + hi + 1) // 2
    moved = abs(float(np.mean(level[mid : hi + 1])) - float(np.mean(level[lo:mid])))
    return moved < _FLAT * pace * (time[(mid + hi) // 2] - time[(lo + mid) // 2])


def _settled_end(level: np.ndarray, sd: np.ndarray, s: int, e: int, b: int, direction: int) -> int:
    """The first sample in ``[s, e]`` within ``_BAND`` noise sd of the median level of the plateau
    ``[e, b]`` after it: the extreme ``b`` of a long noisy plateau is wherever its noise is
    deepest, the median is not, so the end does not move as the plateau grows."""
    plateau = _median_of(level[e : b + 1])
    near = np.flatnonzero(direction * (plateau - level[s : e + 1]) <= _BAND * sd[s : e + 1])
    return s + int(near[0]) if near.size else e


def _settled_start(level: np.ndarray, sd: np.ndarray, a: int, s: int, b: int, direction: int) -> int:
    """The last sample in ``[s, b]`` within ``_BAND`` noise sd of the median level of the plateau
    ``[a, s]`` before it (as :func:`_settled_end`, mirrored)."""
    plateau = _median_of(level[a : s + 1])
    near = np.flatnonzero(direction * (level[s : b + 1] - plateau) <= _BAND * sd[s : b + 1])
    return s + int(near[-1]) if near.size else s


def close_gaps(trends: list[_Trend], time: np.ndarray) -> list[_Trend]:
    """Give the stretch between two trends to the slower one unless it is flat for both.

    The stretch moves by at most the two tolerances; it is flat for a trend if that is slower than
    ``_FLAT`` of the trend's pace. A stretch that is not flat for the slower trend is the slow
    start (or end) of that trend, displaced by noise around the turning point.
    """
    out = list(trends)
    for k in range(len(out) - 1):
        before, after = out[k], out[k + 1]
        if after.start <= before.end:
            continue
        moved = before.tol_end + after.tol_start
        duration = time[after.start] - time[before.end]
        if moved >= _FLAT * min(before.pace, after.pace) * duration:
            if after.pace <= before.pace:
                out[k + 1] = _Trend(before.end, after.end, after.pace, after.tol_start, after.tol_end)
            else:
                out[k] = _Trend(before.start, after.start, before.pace, before.tol_start, before.tol_end)
    return out
