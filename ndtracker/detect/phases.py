"""Cut a 1-D series into phases of collapse, expansion and stabilization.

A **phase** is a stretch of the series' smoothed level (:func:`~ndtracker.detect.smooth_level`,
smoothed separately between jumps) with one direction. The rule every phase satisfies, with
``L`` the level, ``start_level = L[start]`` (at the series' start and after a jump:
``L[start + 4]``) and ``end_level`` the
level at the first sample after the phase; or, where a jump follows it or the series ends, the
level *before* the jump (a phase that ends at a jump does not take the jump's change) at its last
sample with a whole window, ``L[stop - 5]``. Beside a jump and at the two ends of the series the
level's window shrinks to one sample; 4 samples in (``HALF_WIDTH``) it is a mean over 9 again, so
the levels a phase is measured between are not one noisy sample each (a phase of 9 samples or
fewer is measured at ``start`` and ``stop - 1``):

- ``collapse`` (``expansion``): the level falls (rises) from ``start_level`` to ``end_level`` by at
  least ``min_change`` (5 %) of ``|start_level|``, and by at least ``trend_threshold`` (4) noise sd
  of that difference; no jump of the opposite sign lies inside it (``start < index < stop``).
- ``stabilization``: every other stretch. Its net change from ``start_level`` to ``end_level`` is
  below ``min_change`` of ``|start_level|``, or, where the level is too noisy to measure a move of
  ``min_change`` (its two end levels have a noise sd of the difference above ``min_change / z`` of
  the level), below ``trend_threshold`` noise sd of that difference: a change the noise
  explains is not a trend. The second case arises at the end of a series and next to a jump,
  where the level is a mean over few samples, and on noisy curves (activations on each step's own
  batch). No jump lies inside a stabilization: a jump between two flat stretches is the boundary of two
  stabilizations.

A jump lies inside a trend only where the trend *carries* it: the level moves the trend's way on
the jump's sides too (by ``min_change`` of the level, a quarter of ``trend_threshold`` noise sd),
as in a collapse whose fastest step is a jump; a jump with flat level on both sides is a boundary.

How phases are found: the level is scanned left to right for its swings (a zig-zag): a swing ends
at an extreme once the level has turned back from it by ``1.25 * min_change`` of the extreme and
by ``trend_threshold`` noise sd (numpy running extrema; Python only loops over the turns, so the
cost is O(n)). A long swing (whose moving part is over 128 samples) must also hold on the mean
level of the first and last quarter of that part, by ``trend_threshold`` noise sd of those means and
half of ``min_change``: over a long noisy stretch the level's extremes are its noise's extremes, and a
swing between two of them is no move; such a swing is merged with its neighbours. Each swing is then trimmed to where the level moves: its start is the last sample
within ``tol`` of the swing's first extreme, its end the first sample within ``tol`` of its last
extreme (``tol`` the smaller of a tenth of the swing and ``0.4 * min_change`` of the level), and
each is then settled on the plateau next to it: the end is the first sample within one noise sd
of the plateau's median level (the extreme of a long noisy plateau is wherever its noise is
deepest; its median is not, so the end does not drift as the plateau goes on). The series is cut
at the trimmed ends and at each jump a trend does not carry; each stretch is labelled by the rule,
a trend is split at any jump of the opposite sign inside it, a stabilization between two trends of
one kind that moves their way by half of ``min_change`` joins them (the slower stretch of one
trend), and neighbours of one kind are merged unless a jump separates them (for trends: a jump of
the opposite sign). Everything is local: the level at a sample depends on the samples within 8 of
it, noise on the 64-sample blocks around it (under 160 samples, on the whole series where
its level is still: :mod:`ndtracker.detect.level`), and a swing only on the samples since the previous
extreme; so the labels of the first steps do not change when the run goes on, except the phase at
the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ndtracker.detect.jumps import _Candidate, _jump_candidates, _JumpOptions
from ndtracker.detect.level import HALF_WIDTH, _Level, _level_of_finite, _shared_median
from ndtracker.detect._robust import _check, _check_steps, _clipped, _prepare
from ndtracker.detect._zigzag import _Scan, close_gaps

__all__ = ["Phase", "PhaseKind", "label_phases"]


PhaseKind = Literal["collapse", "expansion", "stabilization"]
_ROUNDED = 2 * HALF_WIDTH  # the level's rounding of a kink, in samples
_CARRY = 0.25  # a trend carries its jumps if it moves by this fraction of z noise sd between them


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
        start_level: Smoothed level at ``start``; where the series or a jump starts the phase, 4
            samples in (``start + 4``), where the level has a whole window (at ``start`` for a phase of 9
            samples or fewer).
        end_level: Smoothed level at ``stop`` (the first sample of the next phase); or, where a
            jump starts the next phase or the series ends, the level before the jump (smoothed on
            the phase's side of it) at ``stop - 5``, 4 samples in, where the level has a whole
            window (at ``stop - 1`` for a phase of 9 samples or fewer).
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
    """The labelling rule over one level series: what a phase's net change must be.

    ``cuts`` are the jump positions: the level is smoothed separately on each side of them, and a
    stretch that ends at one is measured up to the level just before it.
    """

    level: _Level
    time: np.ndarray
    min_change: float
    z: float
    cuts: frozenset[int] = frozenset()

    def end(self, lo: int, hi: int) -> int:
        """Index of the end level of the stretch ``[lo, hi)``: ``hi``; or, where a jump or the end
        of the series follows it, its last sample with a whole window (``hi - 1 - HALF_WIDTH``,
        where the level is not the level of one sample) if it is longer than a window, else
        ``hi - 1``."""
        if hi < self.level.level.size and hi not in self.cuts:
            return hi
        return hi - 1 - HALF_WIDTH if hi - lo > 2 * HALF_WIDTH + 1 else hi - 1

    def start(self, lo: int, hi: int) -> int:
        """Index of the start level of ``[lo, hi)``: ``lo``; at the series' start and after a jump,
        ``lo + HALF_WIDTH`` where the level has a whole window (at ``lo`` it is the level of one
        sample: a noisy start level hides a fast early fall), if the stretch is longer than a window."""
        return lo + HALF_WIDTH if (lo == 0 or lo in self.cuts) and hi - lo > 2 * HALF_WIDTH + 1 else lo

    def kind(self, lo: int, hi: int) -> PhaseKind:
        """The kind of the stretch of finite samples ``[lo, hi)`` by its net change."""
        first, end = self.start(lo, hi), self.end(lo, hi)
        a, b = self.level.level[first], self.level.level[end]
        noise = math.hypot(self.level.sd[first], self.level.sd[end])
        if abs(b - a) < max(self.min_change * abs(a), self.z * noise) or b == a:
            return "stabilization"
        return "expansion" if b > a else "collapse"


def _segments(rule: _Rule) -> list[tuple[int, int]]:
    """Cut ``[0, m)`` at the trimmed ends of each swing of the level and at each jump, except the
    jumps a swing carries (:func:`_carries`)."""
    level = rule.level.level
    scan = _Scan(level, rule.level.sd, rule.min_change, rule.z)
    confirmed = scan.confirmed(scan.swings(0, level.size), rule.time, _ROUNDED)
    trends = [(trend, swing[2]) for swing, trend in confirmed]
    spans = []
    for trend, direction in zip(close_gaps([t for t, _ in trends], rule.time), [d for _, d in trends]):
        start = 0 if trend.start <= _ROUNDED else trend.start  # the level's rounding at the ends
        end = level.size if level.size - trend.end <= _ROUNDED else trend.end
        spans.append((start, end, direction))
    carried: set[int] = set()
    for k, (lo, hi, direction) in enumerate(spans):
        if _carries(rule, lo, hi, direction):
            carried.update(c for c in rule.cuts if lo < c <= hi)
            spans[k] = (lo, min(level.size, hi + 1) if hi in rule.cuts else hi, direction)  # past a jump at its end
    free = rule.cuts - carried
    cuts = {0, level.size} | free | {_snap(free, c) for lo, hi, _ in spans for c in (lo, hi)}
    edges = sorted(c for c in cuts if 0 <= c <= level.size)
    return list(zip(edges, edges[1:]))


def _snap(jumps: set[int], cut: int) -> int:
    """A trend's end moved to a jump within the level's rounding of it (no sliver beside a jump)."""
    near = [c for c in jumps if abs(c - cut) <= _ROUNDED]
    return min(near, key=lambda c: abs(c - cut)) if near else cut


def _carries(rule: _Rule, lo: int, hi: int, direction: int) -> bool:
    """Whether the trend ``[lo, hi)`` is one phase with the jumps inside it (or at ``hi``, then it
    ends one sample after that jump): it is a trend of its
    direction by the rule, no jump inside is against it, and the level moves that way between
    the jumps too, by ``min_change`` of its start level and a quarter of ``z`` noise sd (a jump with
    flat level on both sides is a boundary, not a trend)."""
    inside = sorted(c for c in rule.cuts if lo < c <= hi)
    last = min(hi + 1, rule.level.level.size) if hi in rule.cuts else hi  # a jump at its end: past it
    if not inside or rule.kind(lo, last) != {1: "expansion", -1: "collapse"}[direction]:
        return False
    level, sd = rule.level.level, rule.level.sd
    edges = [lo, *inside, hi]
    ends = [_inner(rule, a, b) for a, b in zip(edges, edges[1:]) if b > a]
    if any(direction * (level[j] - level[j - 1]) < 0 for j in inside):
        return False
    moved = direction * sum(level[b] - level[a] for a, b in ends)
    noise = math.sqrt(sum(sd[a] ** 2 + sd[b] ** 2 for a, b in ends))
    return moved >= max(rule.min_change * abs(level[lo]), _CARRY * rule.z * noise)


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
            if merged and merged[-1][2] == kind and _joins(rule, merged[-1][0], lo, hi, kind, jumps):
                merged[-1] = (merged[-1][0], hi, kind)
            else:
                merged.append((lo, hi, kind))
        relabelled = _split(rule, [(lo, hi) for lo, hi, _ in merged], jumps)
        if relabelled == labelled:
            break
        labelled = relabelled
    return labelled


def _slow_stretches(rule: _Rule, labelled: list[tuple[int, int, PhaseKind]]) -> list[tuple[int, int, PhaseKind]]:
    """Relabel a stabilization between two trends of one kind as that kind where it moves their
    way by half of ``min_change`` (no jump at its ends): the slower stretch of one long trend,
    whose own net change is within the noise of the level."""
    out = list(labelled)
    for k in range(1, len(out) - 1):
        (_, _, before), (lo, hi, kind), (_, _, after) = out[k - 1], out[k], out[k + 1]
        if kind != "stabilization" or before != after or lo in rule.cuts or hi in rule.cuts:
            continue
        sign = 1 if before == "expansion" else -1
        a, b = rule.level.level[rule.start(lo, hi)], rule.level.level[rule.end(lo, hi)]
        if sign * (b - a) >= 0.5 * rule.min_change * abs(a):
            out[k] = (lo, hi, before)
    return out


def _joins(rule: _Rule, first: int, lo: int, hi: int, kind: PhaseKind, jumps: list[_Candidate]) -> bool:
    """Whether the stretch ``[first, lo)`` and the next one ``[lo, hi)``, both of ``kind``, make
    one phase: trends unless a jump against them lies between; stabilizations unless a jump does."""
    if kind == "stabilization":
        return lo not in rule.cuts  # a jump between two flat stretches is a boundary
    return not _opposite(jumps, first - 1, hi, kind)


def _inner(rule: _Rule, lo: int, hi: int) -> tuple[int, int]:
    """The first and last sample of ``[lo, hi)`` to measure its move on: ``HALF_WIDTH`` samples
    in from a jump or an end of the series, where the level has a full window (at the jump it is
    the level of one sample, too noisy to carry a jump on), if the stretch is long enough."""
    first = lo + HALF_WIDTH if hi - lo > 2 * HALF_WIDTH + 1 and (lo == 0 or lo in rule.cuts) else lo
    return first, rule.end(lo, hi)


def _to_phase(rule: _Rule, lo: int, hi: int, kind: PhaseKind, where: _Where) -> Phase:
    """The public record of the finite samples ``[lo, hi)``."""
    level = rule.level.level
    a, b = float(level[rule.start(lo, hi)]), float(level[rule.end(lo, hi)])
    change = b - a
    relative = change / abs(a) if a else (math.copysign(math.inf, change) if change else 0.0)
    start, stop = where.start(lo), where.stop(hi)
    return Phase(start, stop, kind, change, relative, change / max(1, hi - lo), a, b, *where.steps_of(start, stop))


@dataclass(frozen=True)
class _Where:
    """Positions of the finite samples in an input of length ``n``, and optional steps: the step
    of each position from ``first`` on (the online detector keeps its buffer's only)."""

    positions: np.ndarray
    n: int
    steps: np.ndarray | None = None
    first: int = 0

    def start(self, lo: int) -> int:
        return 0 if lo == 0 else int(self.positions[lo])

    def stop(self, hi: int) -> int:
        return self.n if hi >= self.positions.size else int(self.positions[hi])

    def steps_of(self, start: int, stop: int) -> tuple[float | None, float | None]:
        if self.steps is None:
            return None, None
        first = self.steps[start - self.first] if start >= self.first else np.float64(math.nan)
        last = self.steps[stop - 1 - self.first]
        return (int(first) if first.is_integer() else float(first)), (int(last) if last.is_integer() else float(last))


def _phases_of_finite(
    y: np.ndarray, jumps: list[_Candidate], where: _Where, opts: _PhaseOptions, padded: np.ndarray | None = None
) -> list[Phase]:
    """The phases of the finite values ``y``, given their jumps (``padded``: the shared running
    median of ``y``, :func:`~ndtracker.detect.level._shared_median`, if known)."""
    level = _level_of_finite(y, [c.t for c in jumps], HALF_WIDTH, padded)
    time = where.positions.astype(float) if where.steps is None else where.steps[where.positions - where.first]
    rule = _Rule(level, time, opts.min_change, opts.trend_threshold, frozenset(c.t for c in jumps))
    labelled = _merge(rule, _split(rule, _segments(rule), jumps), jumps)
    labelled = _merge(rule, _slow_stretches(rule, labelled), jumps)
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
    collapse in the first samples is a phase); a jump is part of a trend that carries it (the
    level moves the trend's way beside it too), or a boundary, and a phase that ends at a jump
    is measured up to the level before it. Labels are local: extending the series does not move earlier boundaries (away
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
        finite. Neighbours have different kinds, except two phases of one kind separated by a
        jump (for trends, a jump of the opposite sign).

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, ``steps`` does not match it, or an
            option is out of range.

    Example:
        >>> import numpy as np
        >>> series = np.r_[np.linspace(100, 30, 100), np.linspace(30, 45, 400), np.full(500, 45.0)]
        >>> series = series + np.random.default_rng(0).normal(0, 1, 1000)
        >>> [(p.kind, p.start, p.stop) for p in label_phases(series)]
        [('collapse', 0, 100), ('expansion', 100, 493), ('stabilization', 493, 1000)]
    """
    opts = _PhaseOptions(min_change, trend_threshold, penalty, resolution, min_length, max_points)
    jump_options = _JumpOptions(min_window=min_window, max_window=max(min_window, 64), noise_window=noise_window)
    y, positions, n = _prepare(values, "label_phases")
    where = _Where(positions, n, _check_steps(steps, n, "label_phases"))
    if y.size < opts.min_length:
        return _too_short(n)
    padded = _shared_median(y, jump_options.min_window)
    clipped = _clipped(y, jump_options.half_blocks, jump_options.min_window, padded)
    return _phases_of_finite(y, _jump_candidates(clipped, jump_options), where, opts, padded)


def _too_short(n: int) -> list[Phase]:
    """The phases of a series with fewer than ``min_length`` finite values: one, or none if empty."""
    return [Phase(0, n, "stabilization")] if n else []
