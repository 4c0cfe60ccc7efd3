"""Cut a 1-D series into phases of collapse, expansion and stabilization.

A **phase** is a stretch with one trend: ``collapse`` (sustained decrease), ``expansion``
(sustained increase) or ``stabilization`` (no significant or no practically sized trend). The
series (clipped as for jumps) is reduced to at most ``max_points`` block means, cut into straight
segments by an optimal penalised partition (a BIC-like penalty in units of a robust, AR(1)-inflated
noise variance, floored at ``resolution`` of the series' magnitude so smooth low-noise curves are
not cut into many pieces), each boundary that is a change of slope rather than a jump is moved to
the best kink of a continuous fit, and each segment is labelled by the significance of its slope
and its relative change; adjacent segments with the same label are merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

from ndtracker.detect.jumps import _JumpOptions
from ndtracker.detect._linefit import _bend_fits, _prefix_sums, _residuals, _rss_table, _slope
from ndtracker.detect._robust import _LAGS, _check, _clipped, _noise_variance, _prepare, _second_differences

__all__ = ["Phase", "PhaseKind", "label_phases"]


PhaseKind = Literal["collapse", "expansion", "stabilization"]


@dataclass(frozen=True)
class Phase:
    """A stretch of the series with one trend; phases are contiguous and cover the series.

    Attributes:
        start: First position (inclusive).
        stop: End position (exclusive).
        kind: ``"collapse"``, ``"expansion"`` or ``"stabilization"``.
        change: Mean of the last quarter of the phase minus mean of its first quarter, in the
            series' units (for a straight trend, three quarters of the total change).
        relative_change: ``change`` over the absolute mean level of the phase.
        slope: Least-squares slope over the phase, in units per finite sample.
    """

    start: int
    stop: int
    kind: PhaseKind
    change: float = 0.0
    relative_change: float = 0.0
    slope: float = 0.0


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


def _merge_pairs(a: np.ndarray) -> np.ndarray:
    """Sum neighbours pairwise (0+1, 2+3, ...); an odd last entry is kept as is."""
    even = a.size // 2 * 2
    return np.concatenate([a[:even:2] + a[1:even:2], a[even:]])


def _block_sums(y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the block sums and counts of ``y``, blocks doubling until there are at most ``max_points``.

    Blocks are ``2**k`` samples aligned at sample 0 (the last may be shorter), summed pairwise level
    by level so that :class:`OnlineDetector` reproduces the same floating-point sums.
    """
    sums, counts = y.astype(float), np.ones(y.size)
    while sums.size > max_points:
        sums, counts = _merge_pairs(sums), _merge_pairs(counts)
    return sums, counts


def _partition(table: np.ndarray, beta: float, min_len: int, short: bool) -> list[tuple[int, int]]:
    """Cut the block series into segments minimising (residual sum of squares + ``beta`` per
    segment) exactly, by dynamic programming over ``table`` (from :func:`_rss_table`).

    A segment has at least ``min_len`` blocks or, if ``short``, any length: a short segment
    (labelled stabilization) holds the part of a jump that falls inside blocks, so that the jump
    does not look like a short steep trend.
    """
    m = table.shape[0] - 1
    best, back = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=int)
    best[0] = 0.0
    for stop in range(1 if short else min_len, m + 1):
        last = stop if short else stop - min_len + 1
        costs = best[:last] + table[stop, :last]
        back[stop] = costs.argmin()
        best[stop] = costs[back[stop]] + beta
    cuts = [m]
    while cuts[-1] > 0:
        cuts.append(int(back[cuts[-1]]))
    return list(zip(cuts[:0:-1], cuts[-2::-1]))


def _end_change(y: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean of the last quarter of ``y`` minus that of its first quarter (at least one point)."""
    q = max(1, y.size // 4)
    return float(np.average(y[-q:], weights=w[-q:]) - np.average(y[:q], weights=w[:q]))


def _kind(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, var: float, min_len: int, opts: _PhaseOptions
) -> PhaseKind:
    """Label one segment: a trend if it has ``min_len`` blocks, a significant slope and a large
    enough end change."""
    if y.size < min_len:
        return "stabilization"
    slope, sxx = _slope(x, y, w)
    significant = abs(slope) * math.sqrt(sxx / var) >= opts.trend_threshold if var > 0 else slope != 0
    sized = abs(_end_change(y, w)) >= opts.min_change * abs(float(np.average(y, weights=w)))
    if not (significant and sized):
        return "stabilization"
    return "expansion" if slope > 0 else "collapse"


def _noise_weights(means: np.ndarray, half: int = 16) -> np.ndarray:
    """Down-weight block means where the noise is locally larger than typical (heteroscedastic).

    The local noise variance is the squared median absolute second difference within ``half``
    blocks on each side; a block's weight is the typical (median) local variance over its own,
    capped at 1 so that noise of one level keeps equal weights, and floored at 1/16.
    """
    if means.size < 3:
        return np.ones(means.size)
    rough = np.abs(_second_differences(means, 1))
    half = min(half, rough.size // 2)
    windows = sliding_window_view(np.pad(rough, half + 1, mode="edge"), 2 * half + 1)[: means.size]
    local = np.median(windows, axis=1) ** 2
    ratio = np.divide(np.median(local), local, out=np.ones_like(local), where=local > 0)
    return np.clip(ratio, 1 / 16, 1.0)


@dataclass(frozen=True)
class _Blocks:
    """A block series ready to cut: centres ``x`` (in blocks), means ``y``, weights ``w``, their
    prefix sums (:func:`_prefix_sums`) and the residual sums of squares of a line over every range
    (:func:`_rss_table`), computed once for both cuts."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    prefix: np.ndarray
    table: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> _Blocks:
        """Prepare the block series ``(x, y, w)``."""
        prefix = _prefix_sums(x, y, w)
        return cls(x, y, w, prefix, _rss_table(prefix))


def _label_blocks(
    sums: np.ndarray, counts: np.ndarray, block_starts: np.ndarray, n: int, opts: _PhaseOptions
) -> list[Phase]:
    """Segment and label a block series (sums and counts of consecutive blocks starting at the
    input positions ``block_starts``), into phases of an input of length ``n``."""
    size = int(counts[0])
    means = sums / counts
    weights = counts / size * _noise_weights(means)
    x = (np.arange(sums.size) * size + (counts - 1) / 2) / size  # block centres, in blocks
    x -= x.mean()
    min_len = max(3 if size == 1 else 4, -(-opts.min_length // size))
    spans, var = _segments(x, means, weights, min_len, size > 1, opts)
    kinds = [_kind(x[lo:hi], means[lo:hi], weights[lo:hi], var, min_len, opts) for lo, hi in spans]
    return _phases(x, means, weights, spans, kinds, block_starts, n, size)


def _segments(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, min_len: int, short: bool, opts: _PhaseOptions
) -> tuple[list[tuple[int, int]], float]:
    """Cut the block series into straight segments; return them and the noise variance.

    A first cut uses the noise of the block means at lags 1 and 2 only (little affected by the
    trends); the noise is then re-estimated on the residuals of that cut, at all lags, and the
    series is cut again.
    """
    floor = (opts.resolution * max(abs(float(np.median(y))), float(np.ptp(y)))) ** 2
    var = _noise_variance(y, _LAGS[:2], floor)
    if y.size < 2 * min_len:
        return [(0, y.size)], var
    blocks = _Blocks.of(x, y, w)
    spans = _cut(blocks, var, min_len, short, opts)
    var = _noise_variance(_residuals(x, y, w, spans), _LAGS, floor)
    return _cut(blocks, var, min_len, short, opts), var


def _cut(blocks: _Blocks, var: float, min_len: int, short: bool, opts: _PhaseOptions) -> list[tuple[int, int]]:
    """Optimal penalised partition of the block series, then kink refinement."""
    log_m = math.log(blocks.y.size)
    spans = _partition(blocks.table, opts.penalty * log_m * var, min_len, short)
    return _refine_kinks(blocks, spans, log_m * var, min_len)


def _refine_kinks(
    blocks: _Blocks, spans: list[tuple[int, int]], cost: float, min_len: int
) -> list[tuple[int, int]]:
    """Move each boundary that is a kink rather than a jump to the best kink of a continuous fit.

    Two lines that need not meet locate a change of slope poorly; where a continuous line with one
    kink over both segments fits within ``cost`` (one parameter's worth) of the two free lines,
    the boundary moves to that kink.
    """
    x, y, w, spans = blocks.x, blocks.y, blocks.w, list(spans)
    for i in range(len(spans) - 1):
        lo, mid, hi = spans[i][0], spans[i][1], spans[i + 1][1]
        if min(mid - lo, hi - mid) < min_len:
            continue
        cuts = np.arange(lo + min_len, hi - min_len + 1)
        fits = _bend_fits(x[lo:hi], y[lo:hi], (x[cuts - 1] + x[cuts]) / 2, w[lo:hi])
        if fits.min() <= blocks.table[mid, lo] + blocks.table[hi, mid] + cost:
            spans[i], spans[i + 1] = (lo, int(cuts[np.argmin(fits)])), (int(cuts[np.argmin(fits)]), hi)
    return spans


def _phases(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    spans: list[tuple[int, int]],
    kinds: list[PhaseKind],
    block_starts: np.ndarray,
    n: int,
    size: int,
) -> list[Phase]:
    """Merge adjacent segments of one kind into phases, at positions of an input of length ``n``."""
    runs: list[list] = []
    for (lo, hi), kind in zip(spans, kinds):
        if runs and runs[-1][2] == kind:
            runs[-1][1] = hi
        else:
            runs.append([lo, hi, kind])
    starts = [0] + [int(block_starts[lo]) for lo, _, _ in runs[1:]] + [n]
    return [
        _phase(x[lo:hi], y[lo:hi], w[lo:hi], kind, start, stop, size)
        for (lo, hi, kind), start, stop in zip(runs, starts[:-1], starts[1:])
    ]


def _phase(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, kind: PhaseKind, start: int, stop: int, size: int
) -> Phase:
    """One phase from the block means it covers."""
    change = _end_change(y, w)
    level = abs(float(np.average(y, weights=w)))
    relative = change / level if level > 0 else (math.copysign(math.inf, change) if change else 0.0)
    slope = _slope(x, y, w)[0] / size if y.size > 1 else 0.0
    return Phase(start, stop, kind, change, relative, slope)


def label_phases(
    values: ArrayLike,
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

    The series (outliers clipped as in :func:`find_jumps`) is reduced to at most ``max_points``
    block means (blocks of a power of two samples), cut into straight segments by an optimal
    penalised partition, and each segment is labelled ``collapse`` or ``expansion`` if its slope is
    significant (``trend_threshold``) and its relative change at least ``min_change``, else
    ``stabilization``. Adjacent segments with the same label are merged. A jump inside a phase
    does not start a phase of its own (see :func:`find_jumps` for jumps).

    Args:
        values: The series, shape ``(n,)``, any units. Non-finite values are skipped (with a
            ``RuntimeWarning``); positions still refer to ``values``.
        min_change: Minimum relative change of a trend segment: ``|change| / |mean level|``, with
            ``change`` the mean of its last quarter minus the mean of its first quarter (default
            0.05, that is 5 %; relative to the level, so not invariant to adding a constant).
        trend_threshold: Minimum significance of a segment's slope, in sd of the slope under the
            estimated AR(1)-inflated noise (default 4.0).
        penalty: Cost of one more segment, in units of ``log(points) * noise variance`` (default
            3.0, BIC-like: three parameters per segment).
        resolution: Deviations smaller than this fraction of the series' magnitude
            (``max(|median|, range)``) count as noise, so smooth low-noise curves are not cut into
            many pieces (default 0.01).
        min_length: Minimum length of a trend segment in samples (default 8; at least three
            samples or four blocks).
        max_points: Maximum number of block means segmented (default 512; in [16, 65536]).
        min_window: Outlier clipping half-width, as in :func:`find_jumps` (default 8).
        noise_window: Outlier clipping context, as in :func:`find_jumps` (default 1024).

    Returns:
        Phases sorted by ``start``, covering ``[0, len(values))`` without gaps; ``[]`` for an
        empty input; a single ``stabilization`` phase when fewer than ``min_length`` values are
        finite.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, or an option is out of range.

    Example:
        >>> import numpy as np
        >>> series = np.r_[np.linspace(100, 30, 100), np.linspace(30, 45, 400), np.full(500, 45.0)]
        >>> series = series + np.random.default_rng(0).normal(0, 1, 1000)
        >>> [(p.start, p.stop, p.kind) for p in label_phases(series)]
        [(0, 100, 'collapse'), (100, 500, 'expansion'), (500, 1000, 'stabilization')]
    """
    opts = _PhaseOptions(min_change, trend_threshold, penalty, resolution, min_length, max_points)
    clip = _JumpOptions(min_window=min_window, max_window=max(min_window, 64), noise_window=noise_window)
    y, positions, n = _prepare(values, "label_phases")
    if y.size < opts.min_length:
        return _too_short(n)
    return _phases_of_clipped(_clipped(y, clip.half_blocks, clip.min_window), positions, n, opts)


def _too_short(n: int) -> list[Phase]:
    """The phases of a series with fewer than ``min_length`` finite values: one, or none if empty."""
    return [Phase(0, n, "stabilization")] if n else []


def _phases_of_clipped(clipped: np.ndarray, positions: np.ndarray, n: int, opts: _PhaseOptions) -> list[Phase]:
    """The phases of the finite values ``clipped`` (outliers clipped) at ``positions`` of ``n``."""
    sums, counts = _block_sums(clipped, opts.max_points)
    return _label_blocks(sums, counts, positions[:: int(counts[0])], n, opts)
