"""Find jumps, anomalies and phases in a 1-D series, offline and online; pure numpy.

A **jump** is a persistent level shift: the series settles at a new level and stays there. At each
position ``t`` and window ``w`` (doubling from ``min_window`` to ``max_window``), a straight line is
fitted to the ``w`` samples left of ``t`` and another to the ``w`` samples from ``t`` on; the gap
between the two lines at the boundary is the estimated shift. Each side has its own slope, so a
linear drift gives no gap and a smooth curve almost none. The gap is divided by its sd under AR(1)
noise whose sd and lag-1 autocorrelation are fitted, around each position, to robust (median-based)
variances of second differences at lags 1 to 16 over ``noise_window`` samples; so autocorrelated,
heavy-tailed and heteroscedastic noise do not inflate it. Before that, each sample is clipped to
its running median over ``2 * min_window + 1`` samples +- 3 robust sd, so a spike or an excursion
shorter than ``min_window`` samples is not a jump (:func:`find_anomalies` reports isolated
outliers). A candidate must also fit a step better than the best continuous bent line over its
window, so the end of a fast trend is not a jump. One jump gives one detection: among the local
maxima of the significance at all windows, one is dropped if a candidate found at a smaller window
(or at the same window with a larger z) lies inside its window.

A **phase** is a stretch with one trend: ``collapse`` (sustained decrease), ``expansion``
(sustained increase) or ``stabilization`` (no significant or no practically sized trend). The
series (clipped as above) is reduced to at most ``max_points`` block means, cut into straight
segments by an optimal penalised partition (a BIC-like penalty in units of a robust, AR(1)-inflated
noise variance, floored at ``resolution`` of the series' magnitude so smooth low-noise curves are
not cut into many pieces), each boundary that is a change of slope rather than a jump is moved to
the best kink of a continuous fit, and each segment is labelled by the significance of its slope
and its relative change; adjacent segments with the same label are merged.

Every decision of :func:`find_jumps` about position ``t`` depends only on the finite samples within
a fixed horizon around ``t``, so :class:`OnlineDetector` (bounded memory, bounded lag) reports
exactly the jumps of :func:`find_jumps` on the same series; its final phases equal
:func:`label_phases`.

Indices are positions in the input: non-finite values count as positions but are skipped (never
interpolated), with a ``RuntimeWarning`` saying how many.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

__all__ = [
    "Jump",
    "Phase",
    "PhaseChange",
    "Event",
    "find_jumps",
    "find_anomalies",
    "label_phases",
    "OnlineDetector",
]

PhaseKind = Literal["collapse", "expansion", "stabilization"]

_BLOCK = 64  # samples per noise-estimation block; contexts are whole blocks, aligned at sample 0
_CLIP = 3.0  # residuals from the running median are clipped at this many robust sd
_BEND = 0.6  # the step must beat the best bent line by as much as a step of _BEND * z_threshold sd
_MAX_PHI = 0.9  # lag-1 autocorrelation is estimated in [0, _MAX_PHI]
_PHI_GRID = np.linspace(0.0, _MAX_PHI, 91)
_LAGS = np.array([1, 2, 4, 8, 16])  # lags of the variogram fitted by the AR(1) noise model
_MAD = 1.4826  # MAD -> sd for Gaussian data
_MEAN_AD = 1.2533  # mean absolute deviation -> sd for Gaussian data


@dataclass(frozen=True)
class Jump:
    """A persistent level shift.

    Attributes:
        index: Position in the input of the first sample at the new level.
        direction: +1 for a rise, -1 for a drop.
        size: Estimated shift (after - before), in the series' units.
        z: Significance: ``abs(size)`` over the noise sd of the estimate.
        before: Level just before the jump (left local fit at the boundary).
        after: Level just after the jump (right local fit at the boundary).
        window: Samples on each side of the fit that found the jump.
    """

    index: int
    direction: int
    size: float
    z: float
    before: float = math.nan
    after: float = math.nan
    window: int = 0


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


# ----------------------------------------------------------------------------- options


def _check(name: str, value: object, low: float, high: float = math.inf, *, integer: bool = False) -> None:
    """Raise ValueError unless ``value`` is a number (an integer if asked) in ``[low, high]``."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class _JumpOptions:
    """Validated options of :func:`find_jumps` (documented there)."""

    z_threshold: float = 5.0
    min_window: int = 8
    max_window: int = 64
    noise_window: int = 1024
    min_size: float = 0.0

    def __post_init__(self) -> None:
        _check("z_threshold", self.z_threshold, 1.0, 100.0)
        _check("min_window", self.min_window, 4, 4096, integer=True)
        _check("max_window", self.max_window, self.min_window, 4096, integer=True)
        _check("noise_window", self.noise_window, 2 * _BLOCK, 2**20, integer=True)
        _check("min_size", self.min_size, 0.0)

    @property
    def windows(self) -> tuple[int, ...]:
        """Window sizes, doubling from ``min_window`` and ending at ``max_window``."""
        sizes = [self.min_window]
        while sizes[-1] * 2 < self.max_window:
            sizes.append(sizes[-1] * 2)
        return tuple(sorted({*sizes, self.max_window}))

    @property
    def half_blocks(self) -> int:
        """Blocks on each side of a position's own block in its noise context."""
        return max(1, (self.noise_window // _BLOCK - 1) // 2)

    @property
    def horizon(self) -> int:
        """Finite samples on each side of a position that its decision can depend on: windows, peak
        search and suppression (4 windows), and clipping nested in the noise contexts."""
        return (
            4 * self.max_window + (2 * self.half_blocks + 3) * _BLOCK + 2 * int(_LAGS[-1]) + self.min_window
        )


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


# ----------------------------------------------------------------------------- input and noise


def _prepare(values: ArrayLike, caller: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Return the finite values, their positions and the input length; warn about skipped ones."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{caller}: values must be a 1-D sequence of numbers ({error})") from None
    if array.ndim != 1:
        raise ValueError(f"{caller}: values must be 1-D, got shape {array.shape}")
    positions = np.flatnonzero(np.isfinite(array))
    if positions.size < array.size:
        skipped = array.size - positions.size
        warnings.warn(
            f"{caller}: skipped {skipped} non-finite value(s) of {array.size}", RuntimeWarning, stacklevel=3
        )
    return array[positions], positions, array.size


def _robust_sd(rows: np.ndarray) -> np.ndarray:
    """Robust sd of each row: MAD about the median, or the mean absolute deviation if the MAD is 0."""
    centred = np.abs(rows - np.median(rows, axis=1, keepdims=True))
    mad = _MAD * np.median(centred, axis=1)
    return np.where(mad > 0, mad, _MEAN_AD * centred.mean(axis=1))


def _block_sd(v: np.ndarray) -> np.ndarray:
    """Robust sd of ``v`` in each block of ``_BLOCK`` samples; a last block of fewer than half as
    many is pooled with the one before it (both get the pooled value)."""
    full, tail = divmod(v.size, _BLOCK)
    sds = list(_robust_sd(v[: full * _BLOCK].reshape(full, _BLOCK))) if full else []
    if tail and (tail >= _BLOCK // 2 or not full):
        sds.append(_robust_sd(v[None, full * _BLOCK :])[0])
    elif tail:
        sds[-1:] = [_robust_sd(v[None, (full - 1) * _BLOCK :])[0]] * 2
    return np.asarray(sds)


def _context_sd(v: np.ndarray, half_blocks: int, n_blocks: int) -> np.ndarray:
    """Robust sd of ``v`` around each of ``n_blocks`` blocks: the median of the block sds within
    ``half_blocks`` blocks on each side (the context shifts inward at the ends of ``v``).

    Entry ``i`` of ``v`` belongs to block ``i // _BLOCK``.
    """
    per_block = _block_sd(v)
    width = min(2 * half_blocks + 1, per_block.size)
    lows = np.clip(np.arange(n_blocks) - half_blocks, 0, per_block.size - width)
    return np.median(sliding_window_view(per_block, width), axis=1)[lows]


def _running_median(y: np.ndarray, half: int) -> np.ndarray:
    """Median of each sample and its ``half`` neighbours on each side.

    Beyond the ends the series is padded with the median of its first (last) ``half + 1`` samples,
    so an outlying end sample is not copied into the padding.
    """
    ends = np.median(y[: half + 1]), np.median(y[-half - 1 :])
    padded = np.concatenate([np.full(half, ends[0]), y, np.full(half, ends[1])])
    return np.median(sliding_window_view(padded, 2 * half + 1), axis=1)


def _local_scale(v: np.ndarray, half_blocks: int) -> np.ndarray:
    """Robust sd of ``v`` over each sample's block context, one value per sample."""
    return np.repeat(_context_sd(v, half_blocks, -(-v.size // _BLOCK)), _BLOCK)[: v.size]


def _clipped(y: np.ndarray, half_blocks: int, half: int) -> np.ndarray:
    """Clip each sample to its running median (``half`` each side) +- ``_CLIP`` local robust sd.

    Any excursion shorter than ``half + 1`` samples is pulled back to within ``_CLIP`` sd of the
    running median, which follows steps and monotone stretches exactly.
    """
    if y.size < 2 * half + 1:
        return y.copy()
    median = _running_median(y, half)
    scale = _local_scale(y - median, half_blocks)
    return np.clip(y, median - _CLIP * scale, median + _CLIP * scale)


def _second_differences(y: np.ndarray, k: int) -> np.ndarray:
    """``y[i + k] - 2 y[i] + y[i - k]``, entry ``i - k``: zero on any straight stretch."""
    return y[2 * k :] - 2.0 * y[k:-k] + y[: -2 * k]


def _ar1_fit(variances: np.ndarray, lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit the AR(1) model to the variances of second differences at ``lags`` (one row per context).

    For noise with sd s and lag-1 autocorrelation phi, the second difference at lag k has variance
    ``s^2 (6 - 8 phi^k + 2 phi^(2k))``. The fit is least squares on the logarithms, over ``phi`` on
    ``_PHI_GRID``; returns (s, phi) per row; rows of zeros (a straight stretch) give ``s = 0``.
    """
    logs = np.log(np.maximum(variances, 1e-300))[:, None, :]
    powers = _PHI_GRID[None, :, None] ** lags[None, None, :]
    shape = np.log(6.0 - 8.0 * powers + 2.0 * powers**2)
    level = (logs - shape).mean(axis=2)
    best = np.argmin(np.sum((logs - shape - level[..., None]) ** 2, axis=2), axis=1)
    s2 = np.exp(level[np.arange(best.size), best])
    return np.where(variances[:, 0] > 0, np.sqrt(s2), 0.0), _PHI_GRID[best]


def _local_noise(y: np.ndarray, half_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the AR(1) noise sd and lag-1 autocorrelation around each sample.

    The variances of second differences at lags 1 to 16 (:func:`_ar1_fit`) are estimated by the
    squared MAD over each block's context: medians make them insensitive to jumps and outliers, and
    second differences to trends that are straight over ``2 k`` samples.
    """
    n_blocks = max(1, -(-y.size // _BLOCK))
    lags = _LAGS[_LAGS <= y.size // 6]
    if lags.size < 2:
        return np.zeros(y.size), np.zeros(y.size)
    variances = np.stack(
        [_context_sd(_second_differences(y, k), half_blocks, n_blocks) ** 2 for k in lags], axis=1
    )
    sigma, phi = _ar1_fit(variances, lags)
    sigma = np.maximum(sigma, 1e-12 * _rounding_scale(y, n_blocks))
    return np.repeat(sigma, _BLOCK)[: y.size], np.repeat(phi, _BLOCK)[: y.size]


def _rounding_scale(y: np.ndarray, n_blocks: int) -> np.ndarray:
    """Largest magnitude of ``y`` in each block and its two neighbours: noise below ``1e-12`` of it
    is rounding, so that noise-free data do not give infinite significance."""
    peak = np.abs(np.pad(y, (0, n_blocks * _BLOCK - y.size))).reshape(n_blocks, _BLOCK).max(axis=1)
    return np.max(sliding_window_view(np.pad(peak, 1, mode="edge"), 3), axis=1)


# ----------------------------------------------------------------------------- jumps


def _side_weights(w: int) -> np.ndarray:
    """Weights giving a least-squares line's value at the boundary, for the ``w`` samples right of it.

    The boundary lies half a sample before the first one; mirrored, the same weights serve the left.
    """
    u = np.arange(w) + 0.5
    return 1.0 / w - (u - u.mean()) * u.mean() / np.sum((u - u.mean()) ** 2)


def _gap_kernel(w: int) -> np.ndarray:
    """Weights over ``2 w`` samples giving (right line - left line) at the boundary in the middle."""
    right = _side_weights(w)
    return np.concatenate([-right[::-1], right])


_VARIANCE_CACHE: dict[int, np.ndarray] = {}


def _gap_variance(w: int) -> np.ndarray:
    """Variance of the gap for unit-variance AR(1) noise, at each autocorrelation of ``_PHI_GRID``."""
    if w not in _VARIANCE_CACHE:
        kernel = _gap_kernel(w)
        lags = np.abs(np.subtract.outer(np.arange(2 * w), np.arange(2 * w)))
        _VARIANCE_CACHE[w] = np.array([kernel @ (phi**lags) @ kernel for phi in _PHI_GRID])
    return _VARIANCE_CACHE[w]


def _gap_scan(y: np.ndarray, sigma: np.ndarray, phi: np.ndarray, w: int) -> tuple[np.ndarray, ...]:
    """Return the gap at every boundary ``t`` in ``[w, len(y) - w]`` (entry ``t - w``), the noise sd
    there and the factor from noise sd to the gap's sd."""
    gap = np.correlate(y, _gap_kernel(w), mode="valid")
    at = np.minimum(np.arange(w, y.size - w + 1), y.size - 1)
    factor = np.sqrt(np.interp(phi[at], _PHI_GRID, _gap_variance(w)))
    return gap, np.maximum(sigma[at], 1e-300), factor


def _peaks(z: np.ndarray, half: int, threshold: float) -> np.ndarray:
    """Indices where ``z >= threshold`` and ``z`` is the first maximum within ``half`` on each side."""
    padded = np.pad(z, half, constant_values=-np.inf)
    windows = sliding_window_view(padded, half)
    left = windows[: z.size].max(axis=1)
    right = windows[half + 1 : half + 1 + z.size].max(axis=1)
    return np.flatnonzero((z >= threshold) & (z > left) & (z >= right))


_BEND_CACHE: dict[int, float] = {}


def _bend_fits(
    u: np.ndarray, y: np.ndarray, knots: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted residual sum of squares of a continuous line with one kink, for each kink position.

    ``u`` is increasing. The basis is ``1, u, max(u - knot, 0)``; its normal equations come from
    prefix sums, so all knots cost O(len(u) + len(knots)).
    """
    w = np.ones_like(u) if weights is None else weights
    terms = np.stack([w, w * u, w * u * u, w * y, w * u * y])
    tails = terms.sum(axis=1)[:, None] - np.concatenate([np.zeros((5, 1)), np.cumsum(terms, axis=1)], axis=1)
    t0, t1, t2, ty, tuy = tails[:, np.searchsorted(u, knots, side="right")]
    s0, s1, s2, sy, suy = terms.sum(axis=1)
    k = knots
    gram = np.empty((k.size, 3, 3))
    gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1] = s0, s1, s2
    gram[:, 0, 2] = gram[:, 2, 0] = t1 - k * t0
    gram[:, 1, 2] = gram[:, 2, 1] = t2 - k * t1
    gram[:, 1, 0] = s1
    gram[:, 2, 2] = t2 - 2 * k * t1 + k * k * t0
    rhs = np.stack([np.full(k.size, sy), np.full(k.size, suy), tuy - k * ty], axis=1)
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return np.maximum(np.sum(w * y * y) - np.sum(coef * rhs, axis=1), 0.0)


def _bend_rss(u: np.ndarray, y: np.ndarray) -> float:
    """Smallest residual sum of squares of a continuous line with one kink, over all kink positions."""
    return float(np.min(_bend_fits(u, y, u[1:-1])))


def _line_rss(u: np.ndarray, y: np.ndarray) -> float:
    """Residual sum of squares of a least-squares line."""
    uc, yc = u - u.mean(), y - y.mean()
    return float(np.sum(yc**2) - np.sum(uc * yc) ** 2 / np.sum(uc**2))


def _unit_bend_rss(w: int) -> float:
    """Residual sum of squares of the best bent line through a noise-free unit step (cached)."""
    if w not in _BEND_CACHE:
        _BEND_CACHE[w] = _bend_rss(np.arange(-w, w) + 0.5, np.repeat([-0.5, 0.5], w))
    return _BEND_CACHE[w]


@dataclass(frozen=True)
class _Candidate:
    """A boundary that passed every test at one window size."""

    t: int
    w: int
    gap: float
    z: float
    before: float
    after: float


def _test_window(
    y: np.ndarray, t: int, w: int, gap: float, noise: float, factor: float, opts: _JumpOptions
) -> _Candidate | None:
    """Test the boundary ``t`` with ``w`` samples each side; return a candidate if it passes.

    The noise sd is raised to the residual sd of the two lines where they are noisier than the
    context (heteroscedastic noise). Then the gap must reach ``z_threshold`` sd and ``min_size``,
    and the step must beat the best bent line (a line with one kink anywhere in the window) by as
    much as a noise-free step of ``z_threshold`` sd would.
    """
    u = np.arange(-w, w) + 0.5
    window = y[t - w : t + w] - np.mean(y[t - w : t + w])
    two_lines = _line_rss(u[:w], window[:w]) + _line_rss(u[w:], window[w:])
    sd = max(noise, math.sqrt(two_lines / (2 * w - 4))) * factor
    excess = _bend_rss(u, window) - two_lines
    if abs(gap) < max(opts.z_threshold * sd, opts.min_size) or excess < (
        _BEND * opts.z_threshold * sd
    ) ** 2 * _unit_bend_rss(w):
        return None
    right = _side_weights(w)
    before, after = float(right @ y[t - w : t][::-1]), float(right @ y[t : t + w])
    return _Candidate(t, w, float(gap), abs(gap) / sd, before, after)


def _candidates(
    y: np.ndarray, sigma: np.ndarray, phi: np.ndarray, w: int, opts: _JumpOptions
) -> list[_Candidate]:
    """Test each local maximum of the gap's z at window ``w``."""
    gap, noise, factor = _gap_scan(y, sigma, phi, w)
    peaks = _peaks(np.abs(gap) / (noise * factor), max(1, w // 2), opts.z_threshold)
    tested = (
        _test_window(y, int(k) + w, w, float(gap[k]), float(noise[k]), float(factor[k]), opts) for k in peaks
    )
    return [c for c in tested if c is not None]


def _suppress(found: list[_Candidate]) -> list[_Candidate]:
    """Keep each candidate unless one of higher priority lies inside its window.

    Priority: smaller window first, then larger z, then earlier position. A candidate is compared
    with all others, kept or not, so each decision only involves candidates within its window.
    """
    ranked = sorted(found, key=lambda c: (c.w, -c.z, c.t))
    kept = [c for i, c in enumerate(ranked) if not any(abs(o.t - c.t) < c.w for o in ranked[:i])]
    return sorted(kept, key=lambda c: c.t)


def _jump_candidates(clipped: np.ndarray, opts: _JumpOptions) -> list[_Candidate]:
    """All jumps of a finite series with outliers clipped (positions in it)."""
    if clipped.size < 2 * opts.min_window:
        return []
    sigma, phi = _local_noise(clipped, opts.half_blocks)
    found = []
    for w in opts.windows:
        if clipped.size >= 2 * w:
            found.extend(_candidates(clipped, sigma, phi, w, opts))
    return _suppress(found)


def _to_jump(c: _Candidate, positions: np.ndarray) -> Jump:
    """Turn a candidate into a public record, at its position in the input."""
    return Jump(int(positions[c.t]), 1 if c.gap > 0 else -1, c.gap, c.z, c.before, c.after, c.w)


def find_jumps(
    values: ArrayLike,
    *,
    z_threshold: float = 5.0,
    min_window: int = 8,
    max_window: int = 64,
    noise_window: int = 1024,
    min_size: float = 0.0,
) -> list[Jump]:
    """Find the persistent level shifts of a 1-D series.

    Args:
        values: The series, shape ``(n,)``, any units. Non-finite values are skipped (with a
            ``RuntimeWarning``); indices still refer to positions in ``values``.
        z_threshold: Minimum significance of a jump, in noise sd of the estimated shift (default
            5.0; in [1, 100]). The same bar applies to the step-versus-bend test.
        min_window: Smallest number of samples fitted on each side (default 8; >= 4). Two jumps
            closer than this are reported as one; fewer than ``2 * min_window`` finite values give
            no jump.
        max_window: Largest number of samples fitted on each side (default 64; >= min_window).
            Window sizes double from ``min_window`` up to it; larger windows find smaller jumps, and
            a transition that is smooth over more than about ``max_window`` samples is a trend, not
            a jump.
        noise_window: Samples around each position used to estimate the local noise (default
            1024; >= 128).
        min_size: Minimum absolute shift, in the series' units (default 0.0: any significant shift).

    Returns:
        The jumps, sorted by index. With ``min_size=0`` the indices are invariant to affine maps
        ``a * values + b``; a negative ``a`` flips each ``direction``.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, or an option is out of range.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> series = np.r_[np.full(200, 10.0), np.full(200, 14.0)] + rng.normal(0, 0.5, 400)
        >>> [(jump.index, jump.direction) for jump in find_jumps(series)]
        [(200, 1)]
    """
    opts = _JumpOptions(z_threshold, min_window, max_window, noise_window, min_size)
    y, positions, _ = _prepare(values, "find_jumps")
    clipped = _clipped(y, opts.half_blocks, opts.min_window)
    return [_to_jump(c, positions) for c in _jump_candidates(clipped, opts)]


def find_anomalies(values: ArrayLike, *, z_threshold: float = 6.0, noise_window: int = 1024) -> list[int]:
    """Find isolated outliers: samples far from the running median of five around them.

    A run of one or two outlying samples is an anomaly; a longer run is a change of level (see
    :func:`find_jumps`).

    Args:
        values: The series, shape ``(n,)``; non-finite values are skipped (with a warning).
        z_threshold: Minimum distance from the running median, in local robust sd of the
            residuals (default 6.0; in [1, 100]).
        noise_window: Samples around each position used to estimate the local sd (default 1024).

    Returns:
        Positions in ``values`` of the outlying samples, sorted.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, or an option is out of range.
    """
    opts = _JumpOptions(z_threshold=z_threshold, noise_window=noise_window)
    y, positions, _ = _prepare(values, "find_anomalies")
    if y.size < 5:
        return []
    residual = y - _running_median(y, 2)
    scale = _local_scale(residual, opts.half_blocks)
    outlying = np.abs(residual) > opts.z_threshold * scale
    return [int(p) for p in positions[outlying & (scale > 0)]]


# ----------------------------------------------------------------------------- phases


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


def _prefix_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cumulative weighted sums of 1, x, x^2, y, xy, y^2 (columns), row 0 all zeros."""
    terms = np.stack([w, w * x, w * x * x, w * y, w * x * y, w * y * y], axis=1)
    return np.concatenate([np.zeros((1, 6)), np.cumsum(terms, axis=0)])


def _segment_rss(prefix: np.ndarray, starts: np.ndarray, stop: int) -> np.ndarray:
    """Weighted residual sum of squares of a line over blocks ``[s, stop)`` for each ``s`` in ``starts``."""
    n, sx, sxx, sy, sxy, syy = (prefix[stop] - prefix[starts]).T
    cxx = np.maximum(sxx - sx * sx / n, 1e-300)
    return np.maximum(syy - sy * sy / n - (sxy - sx * sy / n) ** 2 / cxx, 0.0)


def _rss_table(prefix: np.ndarray) -> np.ndarray:
    """Residual sums of squares of a line over every block range: entry ``[stop, start]``."""
    n, sx, sxx, sy, sxy, syy = (prefix[:, None, :] - prefix[None, :, :]).transpose(2, 0, 1)
    with np.errstate(all="ignore"):
        rss = syy - sy * sy / n - (sxy - sx * sy / n) ** 2 / (sxx - sx * sx / n)
    size = np.subtract.outer(np.arange(n.shape[0]), np.arange(n.shape[0]))
    return np.where(size > 1, np.maximum(rss, 0.0), np.where(size == 1, 0.0, np.inf))


def _partition(prefix: np.ndarray, beta: float, min_len: int, short: bool) -> list[tuple[int, int]]:
    """Cut the block series into segments minimising (residual sum of squares + ``beta`` per
    segment) exactly, by dynamic programming.

    A segment has at least ``min_len`` blocks or, if ``short``, any length: a short segment
    (labelled stabilization) holds the part of a jump that falls inside blocks, so that the jump
    does not look like a short steep trend.
    """
    m = prefix.shape[0] - 1
    table = _rss_table(prefix)
    best, back = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=int)
    best[0] = 0.0
    for stop in range(1 if short else min_len, m + 1):
        starts = np.arange(stop if short else stop - min_len + 1)
        costs = best[starts] + table[stop, starts]
        back[stop] = starts[int(np.argmin(costs))]
        best[stop] = costs.min() + beta
    cuts = [m]
    while cuts[-1] > 0:
        cuts.append(int(back[cuts[-1]]))
    return list(zip(cuts[:0:-1], cuts[-2::-1]))


def _slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares slope and the weighted sum of squares of ``x`` about its mean."""
    xc = x - np.average(x, weights=w)
    sxx = float(np.sum(w * xc * xc))
    return float(np.sum(w * xc * y) / sxx), sxx


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


def _noise_variance(residuals: np.ndarray, lags: np.ndarray, floor: float) -> float:
    """AR(1)-inflated noise variance ``s^2 (1 + phi) / (1 - phi)`` of a series of residuals (fitted
    on second differences at ``lags``, as in :func:`_local_noise`), at least ``floor``."""
    lags = lags[lags <= residuals.size // 6]
    if lags.size < 2:
        return floor
    variances = np.array([[_robust_sd(_second_differences(residuals, k)[None])[0] ** 2 for k in lags]])
    sigma, phi = _ar1_fit(variances, lags)
    return max(float(sigma[0] ** 2 * (1 + phi[0]) / (1 - phi[0])), floor)


def _residuals(x: np.ndarray, y: np.ndarray, w: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Residuals of a weighted least-squares line on each span of three blocks or more."""
    parts = [np.zeros(0)]
    for lo, hi in (span for span in spans if span[1] - span[0] >= 3):
        xs, ys, ws = x[lo:hi], y[lo:hi], w[lo:hi]
        xm, ym = np.average(xs, weights=ws), np.average(ys, weights=ws)
        slope = np.sum(ws * (xs - xm) * (ys - ym)) / np.sum(ws * (xs - xm) ** 2)
        parts.append(ys - ym - slope * (xs - xm))
    return np.concatenate(parts)


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


def _label_blocks(
    sums: np.ndarray, counts: np.ndarray, block_starts: np.ndarray, n: int, opts: _PhaseOptions
) -> list[Phase]:
    """Segment and label a block series (sums and counts of consecutive blocks starting at the
    input positions ``block_starts``), into phases of an input of length ``n``.

    A first cut uses the noise of the block means at lags 1 and 2 only (little affected by the
    trends); the noise is then re-estimated on the residuals of that cut, at all lags, and the
    series is cut again.
    """
    size = int(counts[0])
    means = sums / counts
    weights = counts / size * _noise_weights(means)
    x = (np.arange(sums.size) * size + (counts - 1) / 2) / size  # block centres, in blocks
    x -= x.mean()
    floor = (opts.resolution * max(abs(float(np.median(means))), float(np.ptp(means)))) ** 2
    min_len = max(3 if size == 1 else 4, -(-opts.min_length // size))
    spans = [(0, sums.size)]
    var = _noise_variance(means, _LAGS[:2], floor)
    if sums.size >= 2 * min_len:
        spans = _cut(x, means, weights, var, min_len, size > 1, opts)
        var = _noise_variance(_residuals(x, means, weights, spans), _LAGS, floor)
        spans = _cut(x, means, weights, var, min_len, size > 1, opts)
    kinds = [_kind(x[lo:hi], means[lo:hi], weights[lo:hi], var, min_len, opts) for lo, hi in spans]
    return _phases(x, means, weights, spans, kinds, block_starts, n, size)


def _cut(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, var: float, min_len: int, short: bool, opts: _PhaseOptions
) -> list[tuple[int, int]]:
    """Optimal penalised partition of the block series, then kink refinement."""
    prefix = _prefix_sums(x, y, w)
    log_m = math.log(y.size)
    spans = _partition(prefix, opts.penalty * log_m * var, min_len, short)
    return _refine_kinks(x, y, w, prefix, spans, log_m * var, min_len)


def _refine_kinks(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    prefix: np.ndarray,
    spans: list[tuple[int, int]],
    cost: float,
    min_len: int,
) -> list[tuple[int, int]]:
    """Move each boundary that is a kink rather than a jump to the best kink of a continuous fit.

    Two lines that need not meet locate a change of slope poorly; where a continuous line with one
    kink over both segments fits within ``cost`` (one parameter's worth) of the two free lines,
    the boundary moves to that kink.
    """
    spans = list(spans)
    for i in range(len(spans) - 1):
        lo, mid, hi = spans[i][0], spans[i][1], spans[i + 1][1]
        if min(mid - lo, hi - mid) < min_len:
            continue
        cuts = np.arange(lo + min_len, hi - min_len + 1)
        fits = _bend_fits(x[lo:hi], y[lo:hi], (x[cuts - 1] + x[cuts]) / 2, w[lo:hi])
        free = float(
            _segment_rss(prefix, np.array([lo]), mid)[0] + _segment_rss(prefix, np.array([mid]), hi)[0]
        )
        if fits.min() <= free + cost:
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
    min_change: float = 0.05,
    trend_threshold: float = 4.0,
    penalty: float = 3.0,
    resolution: float = 0.01,
    min_length: int = 8,
    max_points: int = 512,
    min_window: int = 8,
    noise_window: int = 1024,
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
        return [Phase(0, n, "stabilization")] if n else []
    sums, counts = _block_sums(_clipped(y, clip.half_blocks, clip.min_window), opts.max_points)
    return _label_blocks(sums, counts, positions[:: int(counts[0])], n, opts)


# ----------------------------------------------------------------------------- online


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
        z_threshold: float = 5.0,
        min_window: int = 8,
        max_window: int = 64,
        noise_window: int = 1024,
        min_size: float = 0.0,
        min_change: float = 0.05,
        trend_threshold: float = 4.0,
        penalty: float = 3.0,
        resolution: float = 0.01,
        min_length: int = 8,
        max_points: int = 512,
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
            RuntimeError: After :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("OnlineDetector.update() called after finish(); create a new detector")
        self._count += 1
        if not math.isfinite(value):
            self.skipped += 1
            return []
        self._values.append(float(value))
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
        for i in range(start, stop):
            self._blocks.push(float(clipped[i]), self._positions[i])
        if stop > start:
            self._settled_end = self._positions[stop - 1] + 1
        self._decided = limit
        keep = (limit - self.horizon) // _BLOCK * _BLOCK - self._offset  # stays aligned to blocks
        if keep > 0:
            del self._values[:keep], self._positions[:keep]
            self._offset += keep
        if final or self._settled_end - self._phases_at < max(self.stride, self.phase_lag // 2):
            return events
        self._phases_at = self._settled_end
        return events + self._phase_events(final=False)

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
