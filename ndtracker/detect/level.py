"""The smoothed level of a 1-D series: what the phase labels are about, and what a figure can draw.

The **level** at sample ``i`` is a running mean of running medians over ``2 * half_width + 1``
samples (``half_width`` 4 by default), after outliers are clipped to a running median of 17
samples +- 3 robust sd. Windows are
symmetric and shrink at the ends of the series (and at each jump, when jumps are given), so the
level at a sample depends only on the samples within ``2 * half_width`` of it: the level of the
first samples does not change when the run goes on, and a collapse in the first samples stays
sharp. Each level comes with its noise sd: an AR(1) noise
model fitted to robust variances of second differences at lags 1 to 8 in the blocks of 64 samples
around it (inflated for the autocorrelation; longer lags would read a trend's curvature as
autocorrelation), scaled by the window actually used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ndtracker.detect.jumps import _jump_candidates, _JumpOptions
from ndtracker.detect._robust import (
    _BLOCK,
    _ar1_fit,
    _check,
    _check_steps,
    _clipped,
    _context_sd,
    _local_noise,
    _local_scale,
    _prepare,
    _second_differences,
)
from ndtracker.detect._robust import _running_median as _padded_running_median

__all__ = ["smooth_level"]

HALF_WIDTH = 4  # samples on each side of the level's median and mean windows
_NOISE_BLOCKS = 1  # noise context: one block of 64 samples on each side
_CLIP_HALF = 8  # outliers: against the median of this many samples on each side ...
_CLIP = 3.0  # ... +- this many local robust sd
_NOISE_LAGS = np.array([1, 2, 4, 8])  # lags of the level's noise model
_REL_FLOOR = 1e-9  # noise below this fraction of the level is rounding


@dataclass(frozen=True)
class _Level:
    """The level of the finite samples of a series and its noise sd, both one value per sample."""

    level: np.ndarray
    sd: np.ndarray


def _shrinking_windows(n: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """First and end index of the symmetric window of each of ``n`` samples (shrunk at the ends)."""
    i = np.arange(n)
    reach = np.minimum(np.minimum(i, n - 1 - i), half)
    return i - reach, i + reach + 1


def _running_median(y: np.ndarray, half: int) -> np.ndarray:
    """Median over symmetric windows of ``2 * half + 1`` samples, shrinking at the ends."""
    n = y.size
    if n <= 2 * half:
        starts, stops = _shrinking_windows(n, half)
        return np.array([np.median(y[a:b]) for a, b in zip(starts, stops)])
    out = _padded_running_median(y, half)  # exact away from the ends
    for i in range(half):
        out[i] = np.median(y[: 2 * i + 1])
        out[n - 1 - i] = np.median(y[n - 1 - 2 * i :])
    return out


def _running_mean(y: np.ndarray, half: int) -> np.ndarray:
    """Mean over symmetric windows of ``2 * half + 1`` samples, shrinking at the ends."""
    starts, stops = _shrinking_windows(y.size, half)
    total = np.concatenate([[0.0], np.cumsum(y)])
    return (total[stops] - total[starts]) / (stops - starts)


def _window_factor(n: int, half: int) -> np.ndarray:
    """Noise sd of the level relative to the samples' noise sd, from each sample's window size.

    A median of ``m`` values has about ``1.2533 / sqrt(m)`` of the noise sd, and the mean of
    ``m`` overlapping medians about 0.8 of that again (measured on white noise).
    """
    starts, stops = _shrinking_windows(n, half)
    m = (stops - starts).astype(float)
    return np.where(m > 1, 1.2533 / np.sqrt(m) * np.where(m >= 2 * half + 1, 0.8, 1.0), 1.0)


def _noise_sd(y: np.ndarray) -> np.ndarray:
    """Robust noise sd of each sample for a mean of a few neighbours: the AR(1) noise sd fitted
    in its block context (:func:`_local_noise`), inflated by ``sqrt((1 + phi) / (1 - phi))`` for
    the autocorrelation."""
    if y.size < 5:
        return np.zeros(y.size)
    sigma, phi = _short_lag_noise(y)
    per_block = sigma * np.sqrt((1 + phi) / (1 - phi))
    return np.repeat(per_block, _BLOCK)[: y.size]


def _short_lag_noise(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) noise sd and lag-1 autocorrelation per block (as :func:`_local_noise`), fitted on the
    second differences at lags ``_NOISE_LAGS`` only: at longer lags the curvature of a trend
    over a few hundred samples reads as autocorrelation and inflates the level's noise."""
    n_blocks = max(1, -(-y.size // _BLOCK))
    lags = _NOISE_LAGS[_NOISE_LAGS <= y.size // 6]
    if lags.size < 2:
        return _local_noise(y, _NOISE_BLOCKS)
    variances = np.stack(
        [_context_sd(_second_differences(y, k), _NOISE_BLOCKS, n_blocks) ** 2 for k in lags], axis=1
    )
    sigma, phi = _ar1_fit(variances, lags)
    return sigma, phi


def _piece_level(y: np.ndarray, half: int) -> np.ndarray:
    """Level of one piece between jumps (median then mean over shrinking windows)."""
    return _running_mean(_running_median(y, half), half) if y.size else y


def _clip_outliers(y: np.ndarray) -> np.ndarray:
    """Clip each sample to the median of the ``2 * _CLIP_HALF + 1`` around it (shrinking at the
    ends, so the first samples are never clipped towards later ones) +- 3 local robust sd."""
    if y.size < 2 * _CLIP_HALF + 1:
        return y.copy()
    median = _running_median(y, _CLIP_HALF)
    scale = _local_scale(y - median, _NOISE_BLOCKS)
    return np.clip(y, median - _CLIP * scale, median + _CLIP * scale)


def _level_of_finite(y: np.ndarray, cuts: list[int], half: int = HALF_WIDTH) -> _Level:
    """Level and its noise sd of finite values ``y``: outliers clipped, then smoothed separately
    between ``cuts``."""
    if y.size == 0:
        return _Level(np.zeros(0), np.zeros(0))
    clipped = _clip_outliers(y)
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < clipped.size), clipped.size]
    level = np.concatenate([_piece_level(clipped[a:b], half) for a, b in zip(edges, edges[1:])])
    factor = np.concatenate([_window_factor(b - a, half) for a, b in zip(edges, edges[1:])])
    floor = _REL_FLOOR * np.abs(level)
    return _Level(level, np.maximum(_noise_sd(clipped) * factor, floor))


def smooth_level(values: ArrayLike, steps: ArrayLike | None = None, *, half_width: int = HALF_WIDTH) -> np.ndarray:
    """Return the smoothed level of a 1-D series, the curve the phase labels are about.

    A running mean of running medians over ``2 * half_width + 1`` samples, after outliers are
    clipped (to a running median of 17 samples +- 3 robust sd), smoothed separately between the jumps that
    ``find_jumps`` finds with its defaults (so a jump stays sharp); windows are symmetric and
    shrink at both ends and at each jump, so the level of a sample depends only on samples near it.
    With the default ``half_width`` this is exactly the curve :func:`~ndtracker.detect.label_phases`
    labels (each :class:`~ndtracker.detect.Phase` carries its ``start_level`` and ``end_level``
    from it): a figure that draws it shows what the labels say.

    Args:
        values: The series, shape ``(n,)``. Non-finite values are skipped (with a
            ``RuntimeWarning``) and get NaN.
        steps: Optional training step of each value, shape ``(n,)``, increasing. Accepted for
            symmetry with the other functions; the window is counted in samples (each sample is
            one measurement, so the level's noise is the same everywhere).
        half_width: Samples on each side of the windows (default 4; in [1, 1024]).

    Returns:
        The level, shape ``(n,)``, NaN where ``values`` is not finite.

    Raises:
        ValueError: ``values`` is not 1-D or not numeric, ``steps`` does not match, or
            ``half_width`` is out of range.

    Example:
        >>> import numpy as np
        >>> smooth_level([1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0]).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    _check("half_width", half_width, 1, 1024, integer=True)
    y, positions, n = _prepare(values, "smooth_level")
    _check_steps(steps, n, "smooth_level")
    options = _JumpOptions()
    clipped = _clipped(y, options.half_blocks, options.min_window)
    cuts = [c.t for c in _jump_candidates(clipped, options)]
    out = np.full(n, np.nan)
    out[positions] = _level_of_finite(y, cuts, half_width).level
    return out
