"""Find the jumps (persistent level shifts) and anomalies (isolated outliers) of a 1-D series.

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
window, by a margin in noise sd and by a quarter of what a noise-free step of its size would, so
the end of a fast trend and a smooth, noise-free curve are trends, not jumps; and it must reach
``min_relative_size`` (1 %) of the level. One jump gives one detection: among the local maxima of
the significance at all windows, one is dropped if a candidate found at a smaller window (or at the
same window with a larger z) lies inside its window. In the first ``min_window`` samples, where
there is no room for a line on the left, the left side is the mean of the 3 or more samples before
the boundary (a one-sided fit), so a shift in the first samples is found too.

Every decision about position ``t`` depends only on the finite samples within a fixed horizon
(:attr:`_JumpOptions.horizon`) around ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
from numpy.typing import ArrayLike

from ndtracker.detect._linefit import _bend_rss, _line_rss
from ndtracker.detect._robust import (
    _BLOCK,
    _LAGS,
    _PHI_GRID,
    _check,
    _check_steps,
    _clipped,
    _local_noise,
    _local_scale,
    _prepare,
    _running_median,
)

__all__ = ["Jump", "find_jumps", "find_anomalies"]


_BEND = 0.6  # the step must beat the best bent line by as much as a step of _BEND * z_threshold sd
_SHARP = 0.25  # ... and by this fraction of what a noise-free step of its own size would
_EDGE_MIN = 3  # samples before a jump in the first min_window samples (a one-sided fit)


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
        window: Samples on each side of the fit that found the jump (for a jump in the first
            ``min_window`` samples, the right side; the left side is the samples before it).
        relative_size: ``size`` over ``abs(before)``, the shift relative to the level
            (``inf`` with the sign of ``size`` where ``before`` is 0).
        step: Training step of ``index`` where ``steps`` were given, else None.
    """

    index: int
    direction: int
    size: float
    z: float
    before: float = math.nan
    after: float = math.nan
    window: int = 0
    relative_size: float = math.nan
    step: float | None = None


@dataclass(frozen=True)
class _JumpOptions:
    """Validated options of :func:`find_jumps` (documented there)."""

    z_threshold: float = 5.0
    min_window: int = 8
    max_window: int = 64
    noise_window: int = 1024
    min_size: float = 0.0
    min_relative_size: float = 0.01

    def __post_init__(self) -> None:
        _check("z_threshold", self.z_threshold, 1.0, 100.0)
        _check("min_window", self.min_window, 4, 4096, integer=True)
        _check("max_window", self.max_window, self.min_window, 4096, integer=True)
        _check("noise_window", self.noise_window, 2 * _BLOCK, 2**20, integer=True)
        _check("min_size", self.min_size, 0.0)
        _check("min_relative_size", self.min_relative_size, 0.0)

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

    @cached_property
    def horizon(self) -> int:
        """Finite samples on each side of a position that its decision can depend on: windows, peak
        search and suppression (4 windows), and clipping nested in the noise contexts."""
        return (
            4 * self.max_window + (2 * self.half_blocks + 3) * _BLOCK + 2 * int(_LAGS[-1]) + self.min_window
        )


@cache
def _side_weights(w: int) -> np.ndarray:
    """Weights giving a least-squares line's value at the boundary, for the ``w`` samples right of it
    (cached, read-only).

    The boundary lies half a sample before the first one; mirrored, the same weights serve the left.
    """
    u = np.arange(w) + 0.5
    weights = 1.0 / w - (u - u.mean()) * u.mean() / np.sum((u - u.mean()) ** 2)
    weights.flags.writeable = False
    return weights


@cache
def _gap_kernel(w: int) -> np.ndarray:
    """Weights over ``2 w`` samples giving (right line - left line) at the boundary in the middle
    (cached, read-only)."""
    right = _side_weights(w)
    kernel = np.concatenate([-right[::-1], right])
    kernel.flags.writeable = False
    return kernel


@cache
def _gap_variance(w: int) -> np.ndarray:
    """Variance of the gap for unit-variance AR(1) noise, at each autocorrelation of ``_PHI_GRID``.

    Samples ``d`` apart have correlation ``phi^d``, so the variance of ``sum(k_i y_i)`` is
    ``sum_d phi^d a_d`` with ``a_d`` the kernel's autocorrelation at lag ``d`` (counted twice for
    ``d > 0``: once per order of the pair).
    """
    kernel = _gap_kernel(w)
    pairs = np.correlate(kernel, kernel, mode="full")[kernel.size - 1 :]
    pairs[1:] *= 2
    return _PHI_GRID[:, None] ** np.arange(kernel.size) @ pairs


def _gap_scan(y: np.ndarray, sigma: np.ndarray, phi: np.ndarray, w: int) -> tuple[np.ndarray, ...]:
    """Return the gap at every boundary ``t`` in ``[w, len(y) - w]`` (entry ``t - w``), and per
    block of ``_BLOCK`` samples the noise sd and the factor from it to the gap's sd."""
    gap = np.correlate(y, _gap_kernel(w), mode="valid")
    factor = np.sqrt(np.interp(phi, _PHI_GRID, _gap_variance(w)))
    return gap, np.maximum(sigma, 1e-300), factor


def _window_max(z: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Maximum of ``z[s : s + width]`` for each ``s`` in ``starts``; positions outside ``z`` count
    as ``-inf``."""
    at = starts[:, None] + np.arange(width)
    inside = (at >= 0) & (at < z.size)
    return np.where(inside, z[np.clip(at, 0, z.size - 1)], -np.inf).max(axis=1, initial=-np.inf)


def _peaks(z: np.ndarray, half: int, threshold: float) -> np.ndarray:
    """Indices where ``z >= threshold`` and ``z`` is the first maximum within ``half`` on each side."""
    above = np.flatnonzero(z >= threshold)
    if not above.size:
        return above
    left, right = _window_max(z, above - half, half), _window_max(z, above + 1, half)
    return above[(z[above] > left) & (z[above] >= right)]


@cache
def _unit_bend_rss(left: int, right: int) -> float:
    """Residual sum of squares of the best bent line through a noise-free unit step with ``left``
    and ``right`` samples on its sides (cached)."""
    return _bend_rss(np.arange(-left, right) + 0.5, np.repeat([-0.5, 0.5], [left, right]))


@dataclass(frozen=True)
class _Candidate:
    """A boundary that passed every test at one window size."""

    t: int
    w: int
    gap: float
    z: float
    before: float
    after: float


def _relevant(gap: float, before: float, after: float, opts: _JumpOptions) -> bool:
    """Whether a shift reaches ``min_size`` and ``min_relative_size`` of the larger of its levels."""
    return abs(gap) >= max(opts.min_size, opts.min_relative_size * max(abs(before), abs(after)))


def _stepped(u: np.ndarray, window: np.ndarray, two_models: float, gap: float, sd: float, opts: _JumpOptions) -> bool:
    """Whether a step fits ``window`` better than the best continuous bent line, by as much as a
    noise-free step of ``_BEND * z_threshold`` sd would and by ``_SHARP`` of what a noise-free step
    of size ``gap`` would: a smooth curve, however steep and noise-free, is a trend, not a jump."""
    unit = _unit_bend_rss(int(np.sum(u < 0)), int(np.sum(u > 0)))
    excess = _bend_rss(u, window) - two_models
    return excess >= max((_BEND * opts.z_threshold * sd) ** 2, _SHARP * gap * gap) * unit


def _test_window(
    y: np.ndarray, t: int, w: int, gap: float, noise: float, factor: float, opts: _JumpOptions
) -> _Candidate | None:
    """Test the boundary ``t`` with ``w`` samples each side; return a candidate if it passes.

    The noise sd is raised to the residual sd of the two lines where they are noisier than the
    context (heteroscedastic noise). Then the gap must reach ``z_threshold`` sd, ``min_size`` and
    ``min_relative_size`` of the level, and the step must beat the best bent line
    (:func:`_stepped`).
    """
    u = np.arange(-w, w) + 0.5
    window = y[t - w : t + w] - np.mean(y[t - w : t + w])
    two_lines = _line_rss(u[:w], window[:w]) + _line_rss(u[w:], window[w:])
    sd = max(noise, math.sqrt(two_lines / (2 * w - 4))) * factor
    right = _side_weights(w)
    before, after = float(right @ y[t - w : t][::-1]), float(right @ y[t : t + w])
    if abs(gap) < opts.z_threshold * sd or not _relevant(gap, before, after, opts):
        return None
    if not _stepped(u, window, two_lines, gap, sd, opts):
        return None
    return _Candidate(t, w, float(gap), abs(gap) / sd, before, after)


def _edge_candidate(y: np.ndarray, sigma: float, phi: float, opts: _JumpOptions) -> _Candidate | None:
    """The most significant jump at a position ``t`` in ``[_EDGE_MIN, min_window)``: too close to
    the start for a line on its left, so the left side is the mean of the ``t`` samples before it
    (a one-sided fit), the right side a line over ``min_window`` samples."""
    w, best = opts.min_window, None
    for t in range(_EDGE_MIN, min(w, y.size - w + 1)):
        found = _test_edge(y, t, w, sigma, phi, opts)
        if found is not None and (best is None or found.z > best.z):
            best = found
    return best


def _test_edge(y: np.ndarray, t: int, w: int, sigma: float, phi: float, opts: _JumpOptions) -> _Candidate | None:
    """Test the boundary ``t < min_window`` with a one-sided fit (see :func:`_edge_candidate`)."""
    kernel = np.concatenate([np.full(t, -1.0 / t), _side_weights(w)])
    before, after = float(np.mean(y[:t])), float(_side_weights(w) @ y[t : t + w])
    gap = after - before
    u = np.arange(-t, w) + 0.5
    window = y[: t + w] - np.mean(y[: t + w])
    two_models = float(np.sum((window[:t] - window[:t].mean()) ** 2)) + _line_rss(u[t:], window[t:])
    lags = np.abs(np.arange(kernel.size)[:, None] - np.arange(kernel.size)[None, :])
    noise = max(sigma, math.sqrt(two_models / max(1, t + w - 3)))
    sd = noise * math.sqrt(max(float(kernel @ (phi**lags) @ kernel), 1e-300))
    if gap == 0 or abs(gap) < opts.z_threshold * sd or not _relevant(gap, before, after, opts):
        return None
    if not _stepped(u, window, two_models, gap, sd, opts):
        return None
    return _Candidate(t, w, gap, abs(gap) / sd if sd > 0 else math.inf, before, after)


def _candidates(
    y: np.ndarray, sigma: np.ndarray, phi: np.ndarray, w: int, opts: _JumpOptions
) -> list[_Candidate]:
    """Test each local maximum of the gap's z at window ``w`` (noise given per block)."""
    gap, noise, factor = _gap_scan(y, sigma, phi, w)
    z = np.abs(gap) / np.repeat(noise * factor, _BLOCK)[w : y.size - w + 1]
    blocks = [(int(k) + w, (int(k) + w) // _BLOCK) for k in _peaks(z, max(1, w // 2), opts.z_threshold)]
    tested = (
        _test_window(y, t, w, float(gap[t - w]), float(noise[b]), float(factor[b]), opts) for t, b in blocks
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


def _jump_candidates(
    clipped: np.ndarray, opts: _JumpOptions, edge: bool = True, noise: tuple[np.ndarray, np.ndarray] | None = None
) -> list[_Candidate]:
    """All jumps of a finite series with outliers clipped (positions in it); without the
    one-sided test at its first ``min_window`` positions if not ``edge`` (where the online
    detector's buffer no longer starts the series: those positions were decided long ago).
    ``noise``: the local noise (:func:`_local_noise` of ``clipped``), if the caller has it."""
    if clipped.size < 2 * opts.min_window:
        return []
    sigma, phi = _local_noise(clipped, opts.half_blocks) if noise is None else noise
    edge = _edge_candidate(clipped, float(sigma[0]), float(phi[0]), opts) if edge else None
    found = [] if edge is None else [edge]
    for w in opts.windows:
        if clipped.size >= 2 * w:
            found.extend(_candidates(clipped, sigma, phi, w, opts))
    return _suppress(found)


def _to_jump(c: _Candidate, positions: np.ndarray, steps: np.ndarray | None = None, first: int = 0) -> Jump:
    """Turn a candidate into a public record, at its position in the input (and its step;
    ``steps`` holds the step of each position from ``first`` on)."""
    index = int(positions[c.t])
    relative = c.gap / abs(c.before) if c.before else math.copysign(math.inf, c.gap)
    step = None if steps is None else _step_value(steps[index - first])
    return Jump(index, 1 if c.gap > 0 else -1, c.gap, c.z, c.before, c.after, c.w, relative, step)


def _step_value(step: float) -> float | int:
    """A step as an int where it is integral, else a float."""
    return int(step) if float(step).is_integer() else float(step)


def find_jumps(
    values: ArrayLike,
    steps: ArrayLike | None = None,
    *,
    z_threshold: float = _JumpOptions.z_threshold,
    min_window: int = _JumpOptions.min_window,
    max_window: int = _JumpOptions.max_window,
    noise_window: int = _JumpOptions.noise_window,
    min_size: float = _JumpOptions.min_size,
    min_relative_size: float = _JumpOptions.min_relative_size,
) -> list[Jump]:
    """Find the persistent level shifts of a 1-D series.

    Args:
        values: The series, shape ``(n,)``, any units. Non-finite values are skipped (with a
            ``RuntimeWarning``); indices still refer to positions in ``values``.
        steps: Optional training step of each value, shape ``(n,)``, strictly increasing (for
            uneven sampling); each jump then carries the ``step`` of its index.
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
        min_relative_size: Minimum shift relative to the level, ``abs(size) / max(abs(before),
            abs(after))`` (default 0.01, that is 1 %): smaller shifts, however significant, are
            not practically relevant. 0 reports every significant shift.

    Returns:
        The jumps, sorted by index. With ``min_size=0`` and ``min_relative_size=0`` the indices
        are invariant to affine maps ``a * values + b``; a negative ``a`` flips each ``direction``.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, or an option is out of range.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> series = np.r_[np.full(200, 10.0), np.full(200, 14.0)] + rng.normal(0, 0.5, 400)
        >>> [(jump.index, jump.direction) for jump in find_jumps(series)]
        [(200, 1)]
    """
    opts = _JumpOptions(z_threshold, min_window, max_window, noise_window, min_size, min_relative_size)
    y, positions, n = _prepare(values, "find_jumps")
    step_array = _check_steps(steps, n, "find_jumps")
    clipped = _clipped(y, opts.half_blocks, opts.min_window)
    return [_to_jump(c, positions, step_array) for c in _jump_candidates(clipped, opts)]


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
