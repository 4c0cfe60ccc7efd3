"""Cut a 1-D series into phases of collapse, expansion and stabilization.

A **phase** is a stretch of the series' smoothed level (:func:`~ndtracker.detect.smooth_level`,
smoothed separately between jumps) with one direction. The rule every phase satisfies, with
``L`` the level, ``start_level = L[start]`` and ``end_level`` the level at the first sample after
the phase (at the last sample for the last phase):

- ``collapse`` (``expansion``): the level falls (rises) from ``start_level`` to ``end_level`` by at
  least ``min_change`` (5 %) of ``|start_level|``, and by at least ``trend_threshold`` (4) noise sd
  of that difference; no jump of the opposite sign lies inside it (``start < index < stop``).
- ``stabilization``: every other stretch; its net change from ``start_level`` to ``end_level`` is
  below ``min_change`` of the level or within the noise.

How phases are found: the level is scanned once, left to right, for its swings (a zig-zag): a
swing ends at an extreme once the level has turned back from it by ``1.25 * min_change`` of the
extreme and by ``trend_threshold`` noise sd. Each swing is then trimmed to where the level moves:
its start is the last sample still within ``tol`` of the swing's first extreme, its end the first
sample within ``tol`` of its last extreme, with ``tol`` the smaller of a tenth of the swing and
``0.4 * min_change`` of the level (so the stabilization between two swings changes by less than
``min_change``). A trend is split at any jump of the opposite sign inside it, each part
relabelled by the rule, and neighbours of one kind are merged unless a jump of the opposite sign
separates them. Everything is local: the level at a sample depends on the samples within 8 of it,
noise on the 64-sample blocks around it, and a swing only on the samples since the previous
extreme; so the labels of the first steps do not change when the run goes on, except the phase at
the end. Cost: O(n) numpy work plus a Python loop over the local extremes of the level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ndtracker.detect.jumps import _Candidate, _jump_candidates, _JumpOptions
from ndtracker.detect.level import HALF_WIDTH, _Level, _level_of_finite
from ndtracker.detect._robust import _check, _check_steps, _clipped, _prepare

__all__ = ["Phase", "PhaseKind", "label_phases"]


PhaseKind = Literal["collapse", "expansion", "stabilization"]
_SWING = 1.25  # a swing must reach this many times min_change, so that trimming leaves min_change
_TRIM = 0.1  # trimming tolerance: this fraction of the swing ...
_TRIM_LEVEL = 0.4  # ... and at most this fraction of min_change of the level
_FLAT = 0.5  # an end part is flat if slower than this fraction of its swing's mean pace
_ROUNDED = 2 * HALF_WIDTH  # ... and longer than this many samples


@dataclass(frozen=True)
class Phase:
    """A stretch of the series with one direction of its level; phases are contiguous and cover it.

    Attributes:
        start: First position (inclusive).
        stop: End position (exclusive).
        kind: ``"collapse"``, ``"expansion"`` or ``"stabilization"``.
        change: ``end_level - start_level``, in the series' units.
        relative_change: ``change / |start_level|``: what the label is about (at most
            ``-min_change`` for a collapse, at least ``min_change`` for an expansion).
        slope: ``change`` per finite sample of the phase.
        start_level: Smoothed level at ``start``.
        end_level: Smoothed level at ``stop`` (the first sample of the next phase), or at the last
            sample for the last phase.
        start_step: Training step of ``start`` where ``steps`` were given, else None.
        end_step: Training step of the phase's last sample (``stop - 1``) where ``steps`` were
            given, else None.
    """

    start: int
    stop: int
    kind: PhaseKind
    change: float = 0.0
    relative_change: float = 0.0
    slope: float = 0.0
    start_level: float = math.nan
    end_level: float = math.nan
    start_step: float | None = None
    end_step: float | None = None


@dataclass(frozen=True)
class _PhaseOptions:
    """Validated options of :func:`label_phases` (documented there)."""

    min_change: float = 0.05
    trend_threshold: float = 4.0
    penalty: float = 3.0
    resolution: float = 0.01
    min_length: int = 8
    max_points: int = 512

    def __post_init__(self) -> None:
        _check("min_change", self.min_change, 0.0)
        _check("trend_threshold", self.trend_threshold, 0.0, 100.0)
        _check("penalty", self.penalty, 0.0)
        _check("resolution", self.resolution, 0.0, 1.0)
        _check("min_length", self.min_length, 2, 2**20, integer=True)
        _check("max_points", self.max_points, 16, 2**16, integer=True)


@dataclass(frozen=True)
class _Rule:
    """The labelling rule over one level series: what a phase's net change must be."""

    level: _Level
    time: np.ndarray
    min_change: float
    z: float

    def kind(self, lo: int, hi: int) -> PhaseKind:
        """The kind of the stretch of finite samples ``[lo, hi)`` by its net change."""
        a, b = self.level.level[lo], self.level.level[min(hi, self.level.level.size - 1)]
        noise = math.hypot(self.level.sd[lo], self.level.sd[min(hi, self.level.level.size - 1)])
        if abs(b - a) < max(self.min_change * abs(a), self.z * noise) or b == a:
            return "stabilization"
        return "expansion" if b > a else "collapse"

    def swing(self, p: int, i: int) -> float:
        """How far the level must move from the extreme at ``p`` (seen at ``i``) to turn."""
        level, sd = self.level.level, self.level.sd
        return max(_SWING * self.min_change * abs(level[p]), self.z * math.hypot(sd[p], sd[i]))


def _extremes(level: np.ndarray) -> np.ndarray:
    """Indices of the local extremes of ``level`` (where its direction changes) and both ends."""
    direction = np.sign(np.diff(level))
    turns = np.flatnonzero(direction[1:] != direction[:-1]) + 1
    return np.concatenate([[0], turns, [level.size - 1]]) if level.size > 1 else np.zeros(level.size, int)


def _swings(rule: _Rule) -> list[tuple[int, int, int]]:
    """The zig-zag of the level: swings ``(first extreme, last extreme, direction)``."""
    level, swings = rule.level.level, []
    candidates = _extremes(level)
    direction, pivot, high, low = 0, int(candidates[0]), int(candidates[0]), int(candidates[0])
    for i in map(int, candidates[1:]):
        if direction >= 0 and level[i] > level[high]:
            high = i
        if direction <= 0 and level[i] < level[low]:
            low = i
        if direction >= 0 and i != high and level[high] - level[i] >= rule.swing(high, i):
            if direction:
                swings.append((pivot, high, 1))
            direction, pivot, low = -1, high, i
        elif direction <= 0 and i != low and level[i] - level[low] >= rule.swing(low, i):
            if direction:
                swings.append((pivot, low, -1))
            direction, pivot, high = 1, low, i
    if direction:
        swings.append((pivot, high if direction > 0 else low, direction))
    return swings


@dataclass(frozen=True)
class _Trend:
    """A trimmed swing: it moves over ``[start, end)``; ``pace`` is its mean rate of change (per
    step or sample) and ``tol_start``, ``tol_end`` the trimming tolerances at its two extremes."""

    start: int
    end: int
    pace: float
    tol_start: float
    tol_end: float


def _trim(level: np.ndarray, time: np.ndarray, swing: tuple[int, int, int], min_change: float) -> _Trend:
    """The part of a swing ``(a, b, direction)`` where the level moves (see the module).

    An end part is cut off only if it is flat: within ``tol`` of its extreme, slower than
    ``_FLAT`` of the swing's mean pace (``time`` is the step, or position, of each sample), and
    longer than the level's window (shorter ones are the smoothing's rounding of a kink).
    """
    a, b, direction = swing
    size = abs(level[b] - level[a])
    pace = size / max(time[b] - time[a], 1e-300)
    tol_a = min(_TRIM * size, _TRIM_LEVEL * min_change * abs(level[a]))
    tol_b = min(_TRIM * size, _TRIM_LEVEL * min_change * abs(level[b]))
    moved = direction * (level[a : b + 1] - level[a])
    s = a + int(np.flatnonzero(moved <= tol_a)[-1])
    s = s if s - a > _ROUNDED and tol_a < _FLAT * pace * (time[s] - time[a]) else a
    left = direction * (level[b] - level[s : b + 1])
    e = s + int(np.flatnonzero(left <= tol_b)[0])
    e = e if b - e > _ROUNDED and tol_b < _FLAT * pace * (time[b] - time[e]) else b
    return _Trend(s, max(e, s + 1), pace, tol_a, tol_b)


def _close_gaps(trends: list[_Trend], time: np.ndarray) -> list[_Trend]:
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


def _segments(rule: _Rule, min_change: float) -> list[tuple[int, int]]:
    """Cut ``[0, m)`` at the trimmed ends of each swing."""
    level = rule.level.level
    cuts = {0, level.size}
    for trend in _close_gaps([_trim(level, rule.time, swing, min_change) for swing in _swings(rule)], rule.time):
        start = 0 if trend.start <= _ROUNDED else trend.start  # the level's rounding at the ends
        end = level.size if level.size - trend.end <= _ROUNDED else trend.end
        cuts.update((start, end))
    edges = sorted(cuts)
    return list(zip(edges, edges[1:]))


def _opposite(jumps: list[_Candidate], lo: int, hi: int, kind: PhaseKind) -> list[int]:
    """Indices strictly inside ``(lo, hi)`` of the jumps against the direction of ``kind``."""
    sign = {"collapse": 1, "expansion": -1}.get(kind, 0)
    return [c.t for c in jumps if lo < c.t < hi and sign and np.sign(c.gap) == sign]


def _split(rule: _Rule, spans: list[tuple[int, int]], jumps: list[_Candidate]) -> list[tuple[int, int, PhaseKind]]:
    """Label each span by the rule, splitting trends at jumps of the opposite sign, until none is left."""
    out: list[tuple[int, int, PhaseKind]] = []
    pending = list(spans)[::-1]
    while pending:
        lo, hi = pending.pop()
        kind = rule.kind(lo, hi)
        inside = _opposite(jumps, lo, hi, kind)
        if inside:
            pending += [(inside[0], hi), (lo, inside[0])]
        else:
            out.append((lo, hi, kind))
    return out


def _merge(rule: _Rule, labelled: list[tuple[int, int, PhaseKind]], jumps: list[_Candidate]) -> list[tuple[int, int, PhaseKind]]:
    """Merge neighbours of one kind (unless a jump against that kind separates them); relabel the
    merged stretch by the rule, and split it again where it needs."""
    for _ in range(len(labelled)):
        merged: list[tuple[int, int, PhaseKind]] = []
        for lo, hi, kind in labelled:
            if merged and merged[-1][2] == kind and not _opposite(jumps, merged[-1][0] - 1, hi, kind):
                merged[-1] = (merged[-1][0], hi, kind)
            else:
                merged.append((lo, hi, kind))
        relabelled = _split(rule, [(lo, hi) for lo, hi, _ in merged], jumps)
        if relabelled == labelled:
            break
        labelled = relabelled
    return labelled


def _to_phase(rule: _Rule, lo: int, hi: int, kind: PhaseKind, where: _Where) -> Phase:
    """The public record of the finite samples ``[lo, hi)``."""
    level = rule.level.level
    a, b = float(level[lo]), float(level[min(hi, level.size - 1)])
    change = b - a
    relative = change / abs(a) if a else (math.copysign(math.inf, change) if change else 0.0)
    start, stop = where.start(lo), where.stop(hi)
    return Phase(start, stop, kind, change, relative, change / max(1, hi - lo), a, b, *where.steps_of(start, stop))


@dataclass(frozen=True)
class _Where:
    """Positions of the finite samples in an input of length ``n``, and optional steps."""

    positions: np.ndarray
    n: int
    steps: np.ndarray | None = None

    def start(self, lo: int) -> int:
        return 0 if lo == 0 else int(self.positions[lo])

    def stop(self, hi: int) -> int:
        return self.n if hi >= self.positions.size else int(self.positions[hi])

    def steps_of(self, start: int, stop: int) -> tuple[float | None, float | None]:
        if self.steps is None:
            return None, None
        first, last = self.steps[start], self.steps[stop - 1]
        return (int(first) if first.is_integer() else float(first)), (int(last) if last.is_integer() else float(last))


def _phases_of_finite(
    y: np.ndarray, jumps: list[_Candidate], where: _Where, opts: _PhaseOptions
) -> list[Phase]:
    """The phases of the finite values ``y``, given their jumps."""
    level = _level_of_finite(y, [c.t for c in jumps], HALF_WIDTH)
    time = where.positions.astype(float) if where.steps is None else where.steps[where.positions]
    rule = _Rule(level, time, opts.min_change, opts.trend_threshold)
    labelled = _merge(rule, _split(rule, _segments(rule, opts.min_change), jumps), jumps)
    return [_to_phase(rule, lo, hi, kind, where) for lo, hi, kind in labelled]


def label_phases(
    values: ArrayLike,
    steps: ArrayLike | None = None,
    *,
    min_change: float = _PhaseOptions.min_change,
    trend_threshold: float = _PhaseOptions.trend_threshold,
    penalty: float = _PhaseOptions.penalty,
    resolution: float = _PhaseOptions.resolution,
    min_length: int = _PhaseOptions.min_length,
    max_points: int = _PhaseOptions.max_points,
    min_window: int = _JumpOptions.min_window,
    noise_window: int = _JumpOptions.noise_window,
) -> list[Phase]:
    """Cut a 1-D series into contiguous phases of collapse, expansion and stabilization.

    Phases are stretches of the smoothed level (:func:`~ndtracker.detect.smooth_level`) labelled
    by their net change (the rule and the method are in :mod:`ndtracker.detect.phases`): a
    ``collapse`` (``expansion``) falls (rises) by at least ``min_change`` of its start level and
    ``trend_threshold`` noise sd, from its start level to its end level, and holds no jump of
    the opposite sign; a ``stabilization`` does not. A trend can be as short as one sample (a
    collapse in the first samples is a phase); a jump is part of the phase it falls in, or a
    boundary. Labels are local: extending the series does not move earlier boundaries (away
    from its end), and sampling every 5 or every 10 steps gives the same phases in steps, to
    within the smoothing window.

    Args:
        values: The series, shape ``(n,)``, any units. Non-finite values are skipped (with a
            ``RuntimeWarning``); positions still refer to ``values``.
        steps: Optional training step of each value, shape ``(n,)``, strictly increasing (uneven
            sampling allowed); each phase then carries ``start_step`` and ``end_step``.
        min_change: Minimum net relative change of a collapse or expansion,
            ``|end_level - start_level| / |start_level|`` (default 0.05, that is 5 %).
        trend_threshold: Minimum net change of a collapse or expansion, in noise sd of the
            difference of the two levels (default 4.0).
        penalty: Kept for compatibility; no longer used (there is no penalised partition).
        resolution: Kept for compatibility; no longer used.
        min_length: Fewer finite values than this give one ``stabilization`` phase (default 8).
        max_points: Kept for compatibility; no longer used (no block averaging: every sample
            counts, whatever the series' length).
        min_window: Outlier clipping half-width and smallest jump window, as in
            :func:`find_jumps` (default 8).
        noise_window: Outlier clipping and jump noise context, as in :func:`find_jumps`
            (default 1024).

    Returns:
        Phases sorted by ``start``, covering ``[0, len(values))`` without gaps; ``[]`` for an
        empty input; a single ``stabilization`` phase when fewer than ``min_length`` values are
        finite. Neighbours have different kinds, except two trends of one kind separated by a
        jump of the opposite sign.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, ``steps`` does not match it, or an
            option is out of range.

    Example:
        >>> import numpy as np
        >>> series = np.r_[np.linspace(100, 30, 100), np.linspace(30, 45, 400), np.full(500, 45.0)]
        >>> series = series + np.random.default_rng(0).normal(0, 1, 1000)
        >>> [(p.kind, p.start, p.stop) for p in label_phases(series)]
        [('collapse', 0, 105), ('expansion', 105, 494), ('stabilization', 494, 1000)]
    """
    opts = _PhaseOptions(min_change, trend_threshold, penalty, resolution, min_length, max_points)
    jump_options = _JumpOptions(min_window=min_window, max_window=max(min_window, 64), noise_window=noise_window)
    y, positions, n = _prepare(values, "label_phases")
    where = _Where(positions, n, _check_steps(steps, n, "label_phases"))
    if y.size < opts.min_length:
        return _too_short(n)
    clipped = _clipped(y, jump_options.half_blocks, jump_options.min_window)
    return _phases_of_finite(y, _jump_candidates(clipped, jump_options), where, opts)


def _too_short(n: int) -> list[Phase]:
    """The phases of a series with fewer than ``min_length`` finite values: one, or none if empty."""
    return [Phase(0, n, "stabilization")] if n else []
