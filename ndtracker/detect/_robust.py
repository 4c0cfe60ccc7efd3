"""Robust statistics shared by jump detection and phase labelling, and their input checks.

Noise is estimated from medians, so that jumps, outliers and heavy tails do not inflate it: the
robust sd (MAD) of each block of ``_BLOCK`` samples, the median of the block values over a
context of blocks around each position, a running median to clip outliers against, and an AR(1)
noise model (sd and lag-1 autocorrelation) fitted to robust variances of second differences.
Blocks are aligned at sample 0, so a computation on a block-aligned part of a series gives the
same numbers there as on the whole (what lets :class:`~ndtracker.detect.OnlineDetector` agree with the offline
functions).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view
from numpy.typing import ArrayLike

_BLOCK = 64  # samples per noise-estimation block; contexts are whole blocks, aligned at sample 0
_CLIP = 3.0  # residuals from the running median are clipped at this many robust sd
_MAX_PHI = 0.9  # lag-1 autocorrelation is estimated in [0, _MAX_PHI]
_PHI_GRID = np.linspace(0.0, _MAX_PHI, 91)
_LAGS = np.array([1, 2, 4, 8, 16])  # lags of the variogram fitted by the AR(1) noise model
_MAD = 1.4826  # MAD -> sd for Gaussian data
_MEAN_AD = 1.2533  # mean absolute deviation -> sd for Gaussian data
_STACKED = 16384  # series up to this many samples in all share one stacked computation


def _check(name: str, value: object, low: float, high: float = math.inf, *, integer: bool = False) -> None:
    """Raise ValueError unless ``value`` is a number (an integer if asked) in ``[low, high]``."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


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


def _check_steps(steps: ArrayLike | None, n: int, caller: str) -> np.ndarray | None:
    """Return ``steps`` as a float array, or raise unless it is 1-D, of length ``n``, increasing."""
    if steps is None:
        return None
    try:
        array = np.asarray(steps, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{caller}: steps must be a 1-D sequence of numbers ({error})") from None
    if array.shape != (n,):
        raise ValueError(f"{caller}: steps must have shape ({n},) like values, got {array.shape}")
    if n and not (np.all(np.isfinite(array)) and np.all(np.diff(array) > 0)):
        raise ValueError(f"{caller}: steps must be finite and strictly increasing, got {array[:5].tolist()}...")
    return array


@dataclass(frozen=True)
class _Segments:
    """Segments ``values[start : start + length]`` of a flat array, as the index of a matrix whose
    row ``i`` is segment ``i``, padded to the longest with ``size``: the index of an ``inf``
    appended to the array (padding sorts last); and the flat indices, in that matrix with its
    rows sorted, of each row's two middle values (one value twice in a row of odd length)."""

    index: np.ndarray
    lengths: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    odd: np.ndarray

    @classmethod
    def of(cls, starts: np.ndarray, lengths: np.ndarray, size: int) -> _Segments:
        columns = np.arange(int(lengths.max(initial=1)))
        half, odd = np.divmod(lengths, 2)
        first = np.arange(lengths.size) * columns.size
        index = np.where(columns < lengths[:, None], starts[:, None] + columns, size)
        return cls(index, lengths, first + half - 1 + odd, first + half, odd == 1)

    def rows(self, values: np.ndarray) -> np.ndarray:
        """The segments of ``values`` (of the ``size`` given) as rows, padded with ``inf``."""
        return np.append(values, np.inf)[self.index]

    def median(self, ordered: np.ndarray) -> np.ndarray:
        """Median of each segment, from its rows sorted (``ordered``)."""
        flat = ordered.ravel()
        return np.where(self.odd, flat[self.upper], (flat[self.lower] + flat[self.upper]) / 2)


def _segment_robust_sd(values: np.ndarray, segments: _Segments) -> np.ndarray:
    """Robust sd of each segment of ``values``: MAD about the median, or the mean absolute
    deviation if the MAD is 0; all segments sorted at once."""
    rows = segments.rows(values)
    ordered = np.sort(rows, axis=1)  # sorting short rows is faster than partitioning them
    median = segments.median(ordered)
    distances = np.abs(ordered - median[:, None])  # the padding stays inf, and last
    distances.sort(axis=1)
    mad = segments.median(distances)
    zero = mad == 0
    mad = _MAD * mad
    if zero.any():
        lengths = segments.lengths
        for length in np.unique(lengths[zero]):  # rows of one length at once, as numpy sums them
            at = np.flatnonzero(zero & (lengths == length))
            mad[at] = _MEAN_AD * np.abs(rows[at, :length] - median[at, None]).mean(axis=1)
    return mad


def _middle_distances(ordered: np.ndarray, centre: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k``-th and ``(k + 1)``-th smallest ``|ordered[i, j] - centre[i]|`` of each row, rows
    sorted ascending (the second is inf if a row has only k values).

    The ``k`` values nearest a point are ``k`` consecutive ones of a sorted row, so the ``k``-th
    smallest distance is the smallest, over such runs, of the distance to the farther end.
    """
    width = ordered.shape[1] - k + 1
    below, above = centre[:, None] - ordered[:, :width], ordered[:, k - 1 :] - centre[:, None]
    kth = np.maximum(below, above).min(axis=1)
    return kth, np.maximum(below[:, :-1], above[:, 1:]).min(axis=1, initial=np.inf)


def _robust_sd(rows: np.ndarray) -> np.ndarray:
    """Robust sd of each row: MAD about the median, or the mean absolute deviation if the MAD is 0."""
    ordered = np.sort(rows, axis=1)  # sorting short rows is faster than partitioning them
    half, odd = divmod(rows.shape[1], 2)
    if odd:
        median = ordered[:, half]
        mad = _middle_distances(ordered, median, half + 1)[0]
    else:
        median = (ordered[:, half - 1] + ordered[:, half]) / 2
        mad = np.add(*_middle_distances(ordered, median, half)) / 2
    zero = np.flatnonzero(mad == 0)
    mad = _MAD * mad
    mad[zero] = _MEAN_AD * np.abs(rows[zero] - median[zero, None]).mean(axis=1)
    return mad


def _block_rows(size: int) -> tuple[list[int], list[int], list[int]]:
    """The blocks of ``size`` samples: starts and lengths of the rows whose robust sds they get,
    and each block's row. Blocks have ``_BLOCK`` samples, aligned at 0; a last block of fewer
    than half as many is pooled with the one before it (both get the pooled row)."""
    full, tail = divmod(size, _BLOCK)
    starts, lengths = list(range(0, size, _BLOCK)), [_BLOCK] * full + ([tail] if tail else [])
    rows = list(range(len(starts)))
    if full and 0 < tail < _BLOCK // 2:
        starts.pop()
        lengths.pop()
        lengths[-1], rows[-1] = _BLOCK + tail, rows[-2]
    return starts, lengths, rows


@lru_cache(maxsize=32)
def _block_layout(sizes: tuple[int, ...]) -> tuple[_Segments, np.ndarray]:
    """The rows whose robust sds the blocks of series of ``sizes`` samples get (:func:`_block_rows`),
    in the series concatenated, and each block's row (cached: a buffer has few sizes)."""
    starts: list[int] = []
    lengths: list[int] = []
    of_block: list[int] = []
    offset = rows = 0
    for size in sizes:
        first, length, row = _block_rows(size)
        starts += [offset + start for start in first]
        lengths += length
        of_block += [rows + r for r in row]
        offset, rows = offset + size, rows + len(first)
    return _Segments.of(np.array(starts), np.array(lengths), offset), np.array(of_block)


@lru_cache(maxsize=32)
def _context_windows(counts: tuple[int, ...], half_blocks: int, n_blocks: int) -> _Segments:
    """The ``n_blocks`` contexts of each of some series of ``counts`` blocks, in their blocks
    concatenated: the ``2 * half_blocks + 1`` blocks around each block (fewer if the series has
    fewer), shifted inward at its ends (cached: block counts change every ``_BLOCK`` values)."""
    blocks = np.array(counts)
    widths = np.minimum(2 * half_blocks + 1, blocks)
    lows = np.clip(np.arange(n_blocks) - half_blocks, 0, (blocks - widths)[:, None])
    firsts = np.cumsum(blocks) - blocks
    return _Segments.of((lows + firsts[:, None]).ravel(), np.repeat(widths, n_blocks), int(blocks.sum()))


def _block_sd(v: np.ndarray) -> np.ndarray:
    """Robust sd of ``v`` in each block of ``_BLOCK`` samples, the blocks laid out by
    :func:`_block_rows` (a short last block pooled with the one before it); the whole blocks as
    rows of a reshaped array."""
    starts, lengths, rows = _block_rows(v.size)
    whole = sum(length == _BLOCK for length in lengths)
    sds = _robust_sd(v[: whole * _BLOCK].reshape(whole, _BLOCK)) if whole else np.empty(0)
    if whole < len(starts):  # the last row: a short block alone, or pooled with the one before
        sds = np.append(sds, _robust_sd(v[None, starts[-1] : starts[-1] + lengths[-1]]))
    return sds[rows]


def _context_sds(vs: list[np.ndarray], half_blocks: int, n_blocks: int) -> np.ndarray:
    """:func:`_context_sd` of each of ``vs``, one row each. Short series (an online detector's
    buffer) are stacked: one sort serves the blocks of all of them and one the contexts, so the
    cost is a few numpy calls; long ones are taken one by one, their blocks by reshaping."""
    if sum(v.size for v in vs) > _STACKED:
        return np.stack([_long_context_sd(v, half_blocks, n_blocks) for v in vs])
    rows, of_block = _block_layout(tuple(v.size for v in vs))
    windows = _context_windows(tuple(-(-v.size // _BLOCK) for v in vs), half_blocks, n_blocks)
    per_block = _segment_robust_sd(np.concatenate(vs), rows)[of_block]
    return windows.median(np.sort(windows.rows(per_block), axis=1)).reshape(len(vs), n_blocks)


def _long_context_sd(v: np.ndarray, half_blocks: int, n_blocks: int) -> np.ndarray:
    """:func:`_context_sd` of a long series: the block sds as rows of a reshaped array, the
    contexts as sliding windows over them."""
    per_block = _block_sd(v)
    width = min(2 * half_blocks + 1, per_block.size)
    lows = np.clip(np.arange(n_blocks) - half_blocks, 0, per_block.size - width)
    return _row_median(sliding_window_view(per_block, width))[lows]


def _row_median(rows: np.ndarray) -> np.ndarray:
    """Median of each row of a 2-D array (as :func:`numpy.median`, by partial sorting)."""
    half, odd = divmod(rows.shape[1], 2)
    if odd:
        return np.partition(rows, half, axis=1)[:, half]
    middle = np.partition(rows, (half - 1, half), axis=1)[:, half - 1 : half + 1]
    return (middle[:, 0] + middle[:, 1]) / 2


def _context_sd(v: np.ndarray, half_blocks: int, n_blocks: int) -> np.ndarray:
    """Robust sd of ``v`` around each of ``n_blocks`` blocks: the median of the block sds within
    ``half_blocks`` blocks on each side (the context shifts inward at the ends of ``v``).

    Entry ``i`` of ``v`` belongs to block ``i // _BLOCK``.
    """
    return _context_sds([v], half_blocks, n_blocks)[0]


def _running_median(y: np.ndarray, half: int) -> np.ndarray:
    """Median of each sample and its ``half`` neighbours on each side.

    Beyond the ends the series is continued by point reflection through a robust end level
    (:func:`_end_level`): ``y[-k] = 2 a - y[k]``. A monotone stretch stays monotone across the end,
    so the median follows a trend up to the last sample (padding with a constant would flatten
    the first samples of a fast collapse into a plateau and a step); a level shift near the end
    is kept, and an outlying end sample is not the anchor. Two neighbouring windows share
    ``2 * half`` samples; the median of those plus one more value ``x`` is ``x`` clipped to their
    two middle values, so one sort serves two windows.
    """
    head, tail = y[1 : half + 1], y[-half - 2 : -1]
    left = 2.0 * _end_level(y[: half + 1]) - head[::-1]
    right = 2.0 * _end_level(y[::-1][: half + 1]) - tail[::-1]
    padded = np.concatenate([left, y, right])
    pairs = -(-y.size // 2)
    step = padded.strides[0]  # the windows of 2 * half samples from padded[1], every other one:
    shared = as_strided(padded[1:], (pairs, 2 * half), (2 * step, step), writeable=False)
    middle = np.sort(shared, axis=1)[:, half - 1 : half + 1]  # sorting is faster than partitioning
    out = np.empty(2 * pairs)
    out[0::2] = np.clip(padded[: 2 * pairs : 2], middle[:, 0], middle[:, 1])
    out[1::2] = np.clip(padded[2 * half + 1 :: 2][:pairs], middle[:, 0], middle[:, 1])
    return out[: y.size]


def _end_level(y: np.ndarray) -> float:
    """Robust level at ``y[0]`` from the first few samples: the median of ``y[i] - i d`` over the
    first three, with ``d`` the median step between neighbours. On a straight or smooth stretch
    this is ``y[0]``; an outlying ``y[0]`` is outvoted by the two samples after it."""
    if y.size < 3:
        return float(y[0])
    values = y.tolist()  # a few samples: Python floats are faster here than numpy's calls
    steps = sorted(b - a for a, b in zip(values, values[1:]))
    half = len(steps) // 2
    d = steps[half] if len(steps) % 2 else (steps[half - 1] + steps[half]) / 2
    return sorted(values[i] - d * i for i in range(3))[1]


def _median_of(values: np.ndarray) -> float:
    """Median of a non-empty 1-D array (as :func:`numpy.median`, without its overhead)."""
    half, odd = divmod(values.size, 2)
    part = np.partition(values, half if odd else (half - 1, half))
    return float(part[half]) if odd else float((part[half - 1] + part[half]) / 2)


def _local_scale(v: np.ndarray, half_blocks: int) -> np.ndarray:
    """Robust sd of ``v`` over each sample's block context, one value per sample."""
    return np.repeat(_context_sd(v, half_blocks, -(-v.size // _BLOCK)), _BLOCK)[: v.size]


def _clipped(y: np.ndarray, half_blocks: int, half: int, median: np.ndarray | None = None) -> np.ndarray:
    """Clip each sample to its running median (``half`` each side) +- ``_CLIP`` local robust sd.

    Any excursion shorter than ``half + 1`` samples is pulled back to within ``_CLIP`` sd of the
    running median, which follows steps and monotone stretches exactly. ``median``: that running
    median if the caller has it (:func:`_running_median` of ``y`` and ``half``).
    """
    if y.size < 2 * half + 1:
        return y.copy()
    median = _running_median(y, half) if median is None else median
    scale = _local_scale(y - median, half_blocks)
    return np.clip(y, median - _CLIP * scale, median + _CLIP * scale)


def _second_differences(y: np.ndarray, k: int) -> np.ndarray:
    """``y[i + k] - 2 y[i] + y[i - k]``, entry ``i - k``: zero on any straight stretch."""
    return y[2 * k :] - 2.0 * y[k:-k] + y[: -2 * k]


def _ar1_fit(
    variances: np.ndarray, lags: np.ndarray, seen: tuple[tuple[float, ...], ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the AR(1) model to the variances of second differences at ``lags`` (one row per context).

    For noise with sd s and lag-1 autocorrelation phi, the second difference at lag k has variance
    ``s^2 (6 - 8 phi^k + 2 phi^(2k))``; ``seen``, if given, multiplies that by a factor per lag
    (one row per lag of ``lags``, over phi = 0, 0.1, ..., 0.9; interpolated in between): the variances of a
    filtered series (residuals around a running median, :mod:`ndtracker.detect.level`). The fit is
    least squares on the logarithms, over ``phi`` on
    ``_PHI_GRID``; returns (s, phi) per row; rows of zeros (a straight stretch) give ``s = 0``.
    For each phi the best ``log s^2`` is the mean gap between the two curves, which leaves a
    misfit of ``|shape - mean|^2 - 2 (logs - mean) . (shape - mean)`` plus a constant per row.
    """
    columns, spread, mean_shape = _ar1_shapes(tuple(lags.tolist()), seen)
    logs = np.log(np.maximum(variances, 1e-300))
    mean_log = logs.mean(axis=1, keepdims=True)
    deviations = logs - mean_log
    products = sum(deviations[:, j, None] * column for j, column in enumerate(columns))  # no BLAS threads
    best = np.argmin(spread - 2.0 * products, axis=1)
    s2 = np.exp(mean_log[:, 0] - mean_shape[best])
    return np.where(variances[:, 0] > 0, np.sqrt(s2), 0.0), _PHI_GRID[best]


@cache
def _ar1_shapes(
    lags: tuple[int, ...], seen: tuple[tuple[float, ...], ...] | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """What :func:`_ar1_fit` needs of the model's log-variance curve at ``lags`` for each phi on
    ``_PHI_GRID`` (times the factors ``seen``, if given): the curve's deviations from its mean
    (one row per lag), their sum of squares, and its mean."""
    powers = _PHI_GRID[:, None] ** np.array(lags)
    shape = np.log(6.0 - 8.0 * powers + 2.0 * _PHI_GRID[:, None] ** (2 * np.array(lags)))
    if seen is not None:
        coarse = np.linspace(0.0, _MAX_PHI, len(seen[0]))
        shape = shape + np.stack([np.interp(_PHI_GRID, coarse, np.log(row)) for row in seen], axis=1)
    centred = shape - shape.mean(axis=1, keepdims=True)
    return [centred[None, :, j] for j in range(len(lags))], np.sum(centred**2, axis=1), shape.mean(axis=1)


def _local_noise(y: np.ndarray, half_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the AR(1) noise sd and lag-1 autocorrelation around each block of ``_BLOCK`` samples.

    The variances of second differences at lags 1 to 16 (:func:`_ar1_fit`) are estimated by the
    squared MAD over each block's context: medians make them insensitive to jumps and outliers, and
    second differences to trends that are straight over ``2 k`` samples.
    """
    n_blocks = max(1, -(-y.size // _BLOCK))
    lags = _LAGS[_LAGS <= y.size // 6]
    if lags.size < 2:
        return np.zeros(n_blocks), np.zeros(n_blocks)
    sds = _context_sds([_second_differences(y, k) for k in lags], half_blocks, n_blocks)
    variances = np.ascontiguousarray(sds.T**2)
    sigma, phi = _ar1_fit(variances, lags)
    sigma = np.maximum(sigma, 1e-12 * _rounding_scale(y, n_blocks))
    return sigma, phi


def _rounding_scale(y: np.ndarray, n_blocks: int) -> np.ndarray:
    """Largest magnitude of ``y`` in each block and its two neighbours: noise below ``1e-12`` of it
    is rounding, so that noise-free data do not give infinite significance."""
    magnitude = np.zeros(n_blocks * _BLOCK)
    magnitude[: y.size] = np.abs(y)
    peak = magnitude.reshape(n_blocks, _BLOCK).max(axis=1)
    before, after = np.concatenate([peak[:1], peak[:-1]]), np.concatenate([peak[1:], peak[-1:]])
    return np.maximum(peak, np.maximum(before, after))
