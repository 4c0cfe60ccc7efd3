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
autocorrelation), scaled by the window actually used, and capped at 3 times the sd that the
residuals around the level support (their robust sd and lag-1 autocorrelation, calibrated on
white and AR(1) noise): on noise the cap does not bind, on a smooth curve that bends it keeps the
curvature from reading as noise (which would hide a real drift in a stabilization).

A series of fewer than three blocks (under 160 samples) is one noise context, where a fast fall
and rise (a V: a collapse, then a recovery) would inflate that noise over the whole series; there
the noise is also measured where the series is still (:func:`_quiet_sd`): outside the stretches
where the level moves (found under a provisional noise that a V does not inflate), times 1.75,
and the level's sd is the smaller of the two. In three blocks or more, each block's noise is the
median over the three blocks around it, which already leaves a V in one block out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ndtracker.detect.jumps import _jump_candidates, _JumpOptions
from ndtracker.detect._robust import (
    _BLOCK,
    _ar1_fit,
    _block_rows,
    _check,
    _check_steps,
    _clipped,
    _context_sds,
    _local_scale,
    _median_of,
    _prepare,
    _robust_sd,
    _second_differences,
)
from ndtracker.detect._zigzag import _Scan
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


def _running_median(y: np.ndarray, half: int, padded: np.ndarray | None = None) -> np.ndarray:
    """Median over symmetric windows of ``2 * half + 1`` samples, shrinking at the ends
    (``padded``: the padded running median of ``_robust`` for ``y`` and ``half``, if known)."""
    n = y.size
    if n <= 2 * half:
        starts, stops = _shrinking_windows(n, half)
        return np.array([_median_of(y[a:b]) for a, b in zip(starts, stops)])
    out = _padded_running_median(y, half) if padded is None else padded.copy()  # exact away from the ends
    head, tail = y[: 2 * half - 1].tolist(), y[n - 2 * half + 1 :][::-1].tolist()
    for i in range(half):  # an odd window's median is its middle value (a few values: sorted() is cheap)
        out[i] = sorted(head[: 2 * i + 1])[i]
        out[n - 1 - i] = sorted(tail[: 2 * i + 1])[i]
    return out


def _running_mean(y: np.ndarray, half: int) -> np.ndarray:
    """Mean over symmetric windows of ``2 * half + 1`` samples, shrinking at the ends."""
    starts, stops = _shrinking_windows(y.size, half)
    total = np.concatenate([[0.0], np.cumsum(y)])
    return (total[stops] - total[starts]) / (stops - starts)


# Calibration of the level's noise from the residuals around it (white and AR(1) Gaussian noise,
# phi 0 to 0.9, 400 000 samples each, at HALF_WIDTH 4): the residuals' lag-1 autocorrelation (from
# robust sds, :func:`_residual_noise`), and the level's sd and a sample's sd over the residuals' sd.
_RHO = np.array([-0.4017, -0.2979, -0.1984, -0.0980, -0.0018, 0.0993, 0.1878, 0.2723, 0.3429, 0.3996])
_LEVEL_RATIO = np.array([0.3765, 0.4151, 0.4517, 0.5059, 0.5703, 0.6607, 0.7882, 0.9810, 1.3319, 2.1541])
_SAMPLE_RATIO = 1.0 / np.array([0.8325, 0.8181, 0.8038, 0.7830, 0.7611, 0.7280, 0.6859, 0.6222, 0.5298, 0.3873])
_CAP = 3.0  # the second-difference noise is at most this many times what the residuals support

# A series of fewer than _FEW_BLOCKS blocks is one noise context (:func:`_quiet_sd`):
_FEW_BLOCKS = 3  # ... with three blocks or more, each block's context is a median over three
_QUIET = 1.75  # the noise where the level is still, times this (it leaves out the largest moves;
# chosen on AR(1) noise of phi 0.8 and 20 to 159 samples: one stabilization in 0 to 1.4 points fewer series)
_MIN_QUIET = 8  # ... from at least this many second differences at each lag
_MOVE, _MOVE_SD = 0.05, 4.0  # the level moves where it swings by 5 % and 4 noise sd (the phases' defaults)
# Calibration of the second differences of the residuals around the level's running median (AR(1)
# Gaussian noise, phi 0 to 0.9 in steps of 0.1, 3 x 131 072 samples each, HALF_WIDTH 4, robust
# block sds): their variance over that of the noise's own second differences, one row per lag of
# _NOISE_LAGS. The median follows slow noise, so long lags keep less of it.
_SEEN = (
    (1.0054, 0.9976, 0.9961, 0.9955, 0.9949, 0.9890, 0.9770, 0.9502, 0.9070, 0.8501),
    (1.0015, 1.0025, 1.0007, 1.0000, 0.9961, 0.9836, 0.9461, 0.9013, 0.8495, 0.7625),
    (1.0832, 1.0629, 1.0403, 1.0059, 0.9535, 0.8997, 0.8154, 0.7272, 0.6284, 0.5306),
    (0.8418, 0.8040, 0.7666, 0.7128, 0.6463, 0.5685, 0.4791, 0.3846, 0.2948, 0.2229),
)


def _window_sizes(n: int, half: int) -> np.ndarray:
    """Samples in each of ``n`` samples' symmetric window (shrunk at the ends)."""
    starts, stops = _shrinking_windows(n, half)
    return stops - starts


def _noise_context_sds(clipped: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The robust sds in each block's context (one block on each side) that the level's noise is
    estimated from, in one computation: of the residuals around the level (``clipped - level``)
    and of their first differences (:func:`_residual_noise`; two rows), and of the second
    differences of ``clipped`` at each lag of ``_NOISE_LAGS`` up to a sixth of its length
    (:func:`_short_lag_noise`; one row per lag)."""
    n_blocks = max(1, -(-clipped.size // _BLOCK))
    residuals = clipped - level
    lags = _NOISE_LAGS[_NOISE_LAGS <= clipped.size // 6]
    series = [residuals, np.diff(residuals), *(_second_differences(clipped, k) for k in lags)]
    sds = _context_sds(series, _NOISE_BLOCKS, n_blocks)
    return sds[:2], sds[2:]


def _residual_noise(sd: np.ndarray, step_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The level's sd with full windows and one sample's noise sd, per block of ``_BLOCK``.

    Both come from the residuals around the level, so a trend's curvature, which the level
    follows, does not read as noise: from their robust sd ``sd`` in each block's context and
    their lag-1 autocorrelation (from ``step_sd``, the robust sd of their first differences),
    mapped to the two sds by the calibration above (AR(1) noise, phi up to 0.9).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(sd > 0, 1.0 - step_sd**2 / (2.0 * sd**2), 0.0)
    return sd * np.interp(rho, _RHO, _LEVEL_RATIO), sd * np.interp(rho, _RHO, _SAMPLE_RATIO)


def _window_factor(sizes: np.ndarray, half: int) -> np.ndarray:
    """Noise sd of the level relative to the samples' noise sd, from each sample's window size.

    A median of ``m`` values has about ``1.2533 / sqrt(m)`` of the noise sd, and the mean of
    ``m`` overlapping medians about 0.8 of that again (measured on white noise).
    """
    m = sizes.astype(float)
    return np.where(m > 1, 1.2533 / np.sqrt(m) * np.where(m >= 2 * half + 1, 0.8, 1.0), 1.0)


def _noise_sd(lag_sds: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust noise sd of each of ``size`` samples for a mean of a few neighbours: the AR(1)
    noise sd fitted in its block context (:func:`_short_lag_noise`), inflated by
    ``sqrt((1 + phi) / (1 - phi))`` for the autocorrelation; and the noise sd of one sample (the
    fitted sd itself).

    The inflation is the long-window value: where phi is high and the window short it makes a
    mean of 9 samples noisier than one sample (1.45 times at phi 0.9), which no mean is. On a
    series of fewer than ``_FEW_BLOCKS`` blocks the level's noise is capped at one sample's: a
    short smooth curve (a fixed probe batch's) reads as noise of phi 0.9, and its fast collapse
    was judged against that excess. Longer series keep the excess: there the fitted phi, capped
    at 0.9, is low for slower noise (phi 0.95), and the excess is what keeps its wander from
    reading as trends (one stabilization in 60 % of 1000-sample series of AR(0.95) noise, 41 %
    with the cap)."""
    sigma, phi = _short_lag_noise(lag_sds)
    return np.repeat(_inflated(sigma, phi), _BLOCK)[:size], np.repeat(sigma, _BLOCK)[:size]


def _inflated(sigma: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """AR(1) noise of sd ``sigma`` and lag-1 autocorrelation ``phi``, as white noise of the same
    long-window variance: ``sigma * sqrt((1 + phi) / (1 - phi))``."""
    return sigma * np.sqrt((1 + phi) / (1 - phi))


def _one_context(size: int) -> bool:
    """Whether a series of ``size`` samples has fewer than ``_FEW_BLOCKS`` blocks: one noise context."""
    return len(_block_rows(size)[0]) < _FEW_BLOCKS


def _short_lag_noise(lag_sds: np.ndarray, seen: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) noise sd and lag-1 autocorrelation per block (as :func:`_local_noise`), fitted on the
    robust sds of second differences at the first lags of ``_NOISE_LAGS`` only (one row per
    lag; zero with fewer than two lags): at longer lags the curvature of a trend over a few
    hundred samples reads as autocorrelation and inflates the level's noise. ``seen``: the
    second differences are of the residuals around the level's running median, which AR(1)
    noise shows as calibrated in ``_SEEN``."""
    lags = _NOISE_LAGS[: lag_sds.shape[0]]
    if lags.size < 2:
        return np.zeros(lag_sds.shape[1]), np.zeros(lag_sds.shape[1])
    return _ar1_fit(np.ascontiguousarray(lag_sds.T**2), lags, _SEEN[: lags.size] if seen else None)


def _level_sd(clipped: np.ndarray, level: np.ndarray, sizes: np.ndarray, half: int) -> np.ndarray:
    """Noise sd of the level at each sample, ``sizes`` the samples in its window.

    The AR(1) model of :func:`_noise_sd` scaled by the window (:func:`_window_factor`), capped at
    ``_CAP`` times what the residuals around the level support (:func:`_residual_noise`: the
    full-window sd where the window is whole, else the larger of that and a median of ``m``
    samples' sd). On noise the two agree within about 30 %, so the cap does not bind; on a smooth
    curve that bends (a weight's stable rank after a fast collapse) the second differences read
    the curvature as noise, and the cap keeps a real drift from hiding in it.
    """
    if clipped.size < 5:
        return np.zeros(clipped.size)
    residual_sds, lag_sds = _noise_context_sds(clipped, level)
    full, sample = (np.repeat(v, _BLOCK)[: clipped.size] for v in _residual_noise(*residual_sds))
    full = full * np.sqrt((2 * HALF_WIDTH + 1) / (2 * half + 1))
    shrunk = sample * np.where(sizes > 1, 1.2533 / np.sqrt(sizes), 1.0)
    residual = np.where(sizes >= 2 * half + 1, full, np.maximum(full, shrunk))
    inflated, one_sample = _noise_sd(lag_sds, clipped.size)
    noise = inflated * _window_factor(sizes, half)
    if _one_context(clipped.size):  # a short series: see _noise_sd
        noise = np.minimum(noise, one_sample)
    return np.minimum(_CAP * residual, noise)


def _quiet_sd(
    clipped: np.ndarray, level: _Level, median: np.ndarray, sizes: np.ndarray, cuts: list[int], half: int
) -> np.ndarray:
    """The level's noise sd of a series of fewer than ``_FEW_BLOCKS`` blocks: ``level.sd``, or
    less where the series is still outside the stretches where its level moves.

    In a longer series each block's noise is the median over the three blocks around it, so a
    fast fall and rise (a V) within one block does not read as noise; a shorter series is one
    noise context, and the curvature of a V inflates the second differences at every lag (and
    their AR(1) fit's autocorrelation) over the whole of it. Here the stretches where the level
    moves are found under a provisional noise that a V does not inflate
    (:func:`_provisional_sd`, :func:`_still_samples`); the AR(1) model is then fitted to the
    second differences that cross neither those stretches nor a jump (``_MIN_QUIET`` of them at
    each lag, or the noise stays ``level.sd``), times ``_QUIET`` (leaving out the largest moves
    of the level leaves out the largest excursions of noise too; calibrated on short AR(1)
    noise), and scaled by the window; the level's sd is the smaller of that and ``level.sd``.
    """
    lags = _NOISE_LAGS[_NOISE_LAGS <= clipped.size // 6]
    if not _one_context(clipped.size) or lags.size < 2:
        return level.sd
    provisional = np.minimum(level.sd, _provisional_sd(clipped - median, lags) * _window_factor(sizes, half))
    still = _still_samples(_Level(level.level, provisional), cuts)
    quiet = [_quiet_second_differences(clipped, still, k) for k in lags]
    if still.all() or min(q.size for q in quiet) < _MIN_QUIET:
        return level.sd
    sigma, phi = _short_lag_noise(np.stack([_robust_sd(q[None]) for q in quiet]))
    noise = _QUIET * _inflated(sigma[0], phi[0])
    return np.minimum(level.sd, noise * _window_factor(sizes, half))


def _provisional_sd(rough: np.ndarray, lags: np.ndarray) -> float:
    """One sample's noise sd (inflated for its autocorrelation, as :func:`_noise_sd`) from the
    second differences of ``rough``, the residuals around the level's running median, over the
    whole series: the median follows a monotone fall or rise and its corners, which the level (a
    mean of 9 medians) rounds off, so a V's curvature does not read as noise. AR(1) noise shows
    through the median as calibrated in ``_SEEN`` (at ``HALF_WIDTH``); on noise this is as large
    as the usual estimate, but it scatters more (the median also follows slow noise)."""
    lag_sds = np.stack([_robust_sd(_second_differences(rough, k)[None]) for k in lags])
    sigma, phi = _short_lag_noise(lag_sds, seen=True)
    return float(_inflated(sigma[0], phi[0]))


def _still_samples(level: _Level, cuts: list[int]) -> np.ndarray:
    """Whether each sample lies outside the stretches where ``level`` moves (the trimmed swings of
    its zig-zag, :class:`~ndtracker.detect._zigzag._Scan`, as the phases find them with their
    default ``min_change`` and ``trend_threshold``), and is not the first sample after a jump."""
    scan = _Scan(level.level, level.sd, _MOVE, _MOVE_SD)
    positions = np.arange(level.level.size, dtype=float)
    still = np.ones(level.level.size, bool)
    for _, trend in scan.confirmed(scan.swings(0, level.level.size), positions, 2 * HALF_WIDTH):
        still[trend.start : trend.end + 1] = False
    still[[c for c in cuts if 0 < c < still.size]] = False
    return still


def _quiet_second_differences(y: np.ndarray, still: np.ndarray, k: int) -> np.ndarray:
    """The second differences of ``y`` at lag ``k`` whose ``2 k + 1`` samples are all still."""
    moving = np.concatenate([[0], np.cumsum(~still)])
    windows = moving[2 * k + 1 :] - moving[: -2 * k - 1]
    return _second_differences(y, k)[windows == 0]


def _piece_level(y: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Level of one piece between jumps (median then mean over shrinking windows), and the median."""
    median = _running_median(y, half) if y.size else y
    return (_running_mean(median, half) if y.size else y), median


def _clip_outliers(y: np.ndarray, padded: np.ndarray | None = None) -> np.ndarray:
    """Clip each sample to the median of the ``2 * _CLIP_HALF + 1`` around it (shrinking at the
    ends, so the first samples are never clipped towards later ones) +- 3 local robust sd."""
    if y.size < 2 * _CLIP_HALF + 1:
        return y.copy()
    median = _running_median(y, _CLIP_HALF, padded)
    scale = _local_scale(y - median, _NOISE_BLOCKS)
    return np.clip(y, median - _CLIP * scale, median + _CLIP * scale)


def _shared_median(y: np.ndarray, half: int) -> np.ndarray | None:
    """The running median that both outlier clippings (the jumps' and the level's) start from,
    computed once: :func:`ndtracker.detect._robust._running_median` of ``y`` over ``2 * half + 1``
    samples, where ``half`` is the level's clipping half-width and ``y`` is long enough; else None."""
    return _padded_running_median(y, half) if half == _CLIP_HALF and y.size > 2 * half else None


def _level_of_finite(
    y: np.ndarray, cuts: list[int], half: int = HALF_WIDTH, padded: np.ndarray | None = None
) -> _Level:
    """Level and its noise sd of finite values ``y``: outliers clipped, then smoothed separately
    between ``cuts`` (``padded``: :func:`_shared_median` of ``y``, if known)."""
    if y.size == 0:
        return _Level(np.zeros(0), np.zeros(0))
    clipped = _clip_outliers(y, padded)
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < clipped.size), clipped.size]
    pieces = [_piece_level(clipped[a:b], half) for a, b in zip(edges, edges[1:])]
    level, median = (np.concatenate(part) for part in zip(*pieces))
    sizes = np.concatenate([_window_sizes(b - a, half) for a, b in zip(edges, edges[1:])])
    floor = _REL_FLOOR * np.abs(level)
    sd = _quiet_sd(clipped, _Level(level, _level_sd(clipped, level, sizes, half)), median, sizes, cuts, half)
    return _Level(level, np.maximum(sd, floor))


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
    padded = _shared_median(y, options.min_window)
    clipped = _clipped(y, options.half_blocks, options.min_window, padded)
    cuts = [c.t for c in _jump_candidates(clipped, options)]
    out = np.full(n, np.nan)
    out[positions] = _level_of_finite(y, cuts, half_width, padded).level
    return out
