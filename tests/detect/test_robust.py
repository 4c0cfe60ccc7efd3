"""Tests of the shared statistics of detection: ndtracker.detect._robust and ndtracker.detect._linefit.

Each fast routine is checked against the plain numpy computation it replaces (exact equality
where the arithmetic is the same, a tolerance where only the summation order differs).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from ndtracker.detect._linefit import _bend_fits, _prefix_sums, _rss_table
from ndtracker.detect._robust import (
    _BLOCK,
    _PHI_GRID,
    _ar1_fit,
    _block_sd,
    _clipped,
    _context_sds,
    _robust_sd,
    _running_median,
)


def end_level(y: np.ndarray) -> float:
    """Oracle of the robust end level: median of y[i] - i * (median step), i = 0, 1, 2."""
    step = np.median(y[1:] - y[:-1])
    return float(np.median([y[0], y[1] - step, y[2] - 2 * step]))


def padded_running_median(y: np.ndarray, half: int) -> np.ndarray:
    """Oracle: np.median over each window, the ends continued by point reflection through the
    robust end level (y[-k] = 2 a - y[k])."""
    left = [2 * end_level(y[: half + 1]) - y[k] for k in range(half, 0, -1)]
    right = [2 * end_level(y[::-1][: half + 1]) - y[-1 - k] for k in range(1, half + 1)]
    padded = np.concatenate([left, y, right])
    return np.median(sliding_window_view(padded, 2 * half + 1), axis=1)


def mad_sd(rows: np.ndarray) -> np.ndarray:
    """Oracle: 1.4826 MAD per row, or 1.2533 mean absolute deviation where the MAD is 0."""
    centred = np.abs(rows - np.median(rows, axis=1, keepdims=True))
    mad = 1.4826 * np.median(centred, axis=1)
    return np.where(mad > 0, mad, 1.2533 * centred.mean(axis=1))


@pytest.mark.parametrize("n, half", [(5, 2), (6, 2), (101, 2), (17, 8), (18, 8), (1000, 8), (1001, 8)])
@pytest.mark.parametrize("rounded", [False, True])
def test_running_median_equals_numpy(n: int, half: int, rounded: bool) -> None:
    y = np.random.default_rng(n + half).standard_t(2, n) * 10
    y = np.round(y) if rounded else y  # ties
    assert np.array_equal(_running_median(y, half), padded_running_median(y, half))


@pytest.mark.parametrize("width", [1, 2, 3, 15, 63, 64])
def test_robust_sd_equals_numpy_mad(width: int) -> None:
    rng = np.random.default_rng(width)
    rows = np.concatenate([rng.standard_t(3, (50, width)), np.round(rng.normal(size=(50, width)))])
    rows[0] = 4.0  # constant row: MAD and mean absolute deviation both 0
    rows[1, : max(1, width - 1)] = 2.0  # MAD 0, mean absolute deviation not
    assert np.array_equal(_robust_sd(rows), mad_sd(rows))


@pytest.mark.parametrize("n", [1, 31, 32, 63, 64, 65, 95, 96, 97, 1000])
def test_block_sd_pools_a_short_last_block(n: int) -> None:
    v = np.random.default_rng(n).normal(size=n)
    full, tail = divmod(n, _BLOCK)
    expected = [mad_sd(v[None, i * _BLOCK : (i + 1) * _BLOCK])[0] for i in range(full)]
    if tail >= _BLOCK // 2 or (tail and not full):
        expected.append(mad_sd(v[None, full * _BLOCK :])[0])
    elif tail:
        expected[-1:] = [mad_sd(v[None, (full - 1) * _BLOCK :])[0]] * 2
    assert np.array_equal(_block_sd(v), expected)


def test_ar1_fit_recovers_the_model_it_fits() -> None:
    lags = np.array([1, 2, 4, 8, 16])
    phis = _PHI_GRID[[0, 10, 45, 90]]
    sds = np.array([0.5, 1.0, 3.0, 1e-3])
    powers = phis[:, None] ** lags
    variances = sds[:, None] ** 2 * (6 - 8 * powers + 2 * powers**2)
    sigma, phi = _ar1_fit(np.vstack([variances, np.zeros(5)]), lags)
    assert np.array_equal(phi[:4], phis)
    assert sigma[:4] == pytest.approx(sds, rel=1e-12)
    assert sigma[4] == 0.0  # a straight stretch


def test_clipped_pulls_spikes_back_and_never_shares_its_result() -> None:
    y = np.random.default_rng(0).normal(size=5000)
    y[[100, 2000]] = [40.0, -40.0]
    first = _clipped(y, 7, 8)
    expected = first.copy()
    first[:] = 0.0  # a caller may write into its result
    again = _clipped(y.copy(), 7, 8)
    assert np.array_equal(again, expected)
    assert abs(again[100]) < 10 and abs(again[2000]) < 10
    assert np.mean(again == y) > 0.99  # beyond the spikes, only the far tail of the noise moves


def test_bend_fits_equal_least_squares() -> None:
    rng = np.random.default_rng(1)
    u = np.sort(rng.uniform(-10, 10, 40))
    y = np.abs(u - 2.0) + rng.normal(0, 0.1, 40)
    weights = rng.uniform(0.5, 2.0, 40)
    knots = u[5:35:5]
    expected = []
    for knot in knots:
        basis = np.stack([np.ones_like(u), u, np.maximum(u - knot, 0)], axis=1) * np.sqrt(weights)[:, None]
        residual = np.linalg.lstsq(basis, y * np.sqrt(weights), rcond=None)[1]
        expected.append(float(residual[0]))
    assert _bend_fits(u, y, knots, weights) == pytest.approx(expected, rel=1e-9)


def test_rss_table_equals_line_fits() -> None:
    rng = np.random.default_rng(2)
    x, y, w = np.arange(30.0), rng.normal(size=30), rng.uniform(0.5, 2.0, 30)
    table = _rss_table(_prefix_sums(x, y, w))
    for start, stop in [(0, 30), (3, 9), (10, 13), (20, 30)]:
        sw = np.sqrt(w[start:stop])
        basis = np.stack([np.ones(stop - start), x[start:stop]], axis=1) * sw[:, None]
        residual = np.linalg.lstsq(basis, y[start:stop] * sw, rcond=None)[1]
        assert table[stop, start] == pytest.approx(float(residual[0]), rel=1e-8, abs=1e-12)
    assert table[5, 4] == 0.0 and table[4, 5] == np.inf


def context_sd_oracle(v: np.ndarray, half_blocks: int, n_blocks: int) -> np.ndarray:
    """Oracle: np.median of the block sds (oracle above) within ``half_blocks`` of each block,
    the context shifted inward at the ends."""
    sds = np.array(
        [mad_sd(v[None, i * _BLOCK : (i + 1) * _BLOCK])[0] for i in range(-(-v.size // _BLOCK))]
    )
    full, tail = divmod(v.size, _BLOCK)
    if full and 0 < tail < _BLOCK // 2:
        sds[-2:] = mad_sd(v[None, (full - 1) * _BLOCK :])[0]
    width = min(2 * half_blocks + 1, sds.size)
    lows = np.clip(np.arange(n_blocks) - half_blocks, 0, sds.size - width)
    return np.array([np.median(sds[low : low + width]) for low in lows])


@pytest.mark.parametrize("half_blocks", [1, 7])
def test_context_sds_of_several_series_equal_each_alone(half_blocks: int) -> None:
    """One stacked computation gives each series exactly its own context sds, whatever the
    other series' lengths (pooled and unpooled last blocks, short series, ties)."""
    rng = np.random.default_rng(half_blocks)
    sizes = [1, 5, 40, 64, 70, 100, 127, 500, 1000]  # stacked (short); and a long one alone below
    vs = [rng.standard_t(3, n) * 10 for n in sizes[:-1]] + [np.round(rng.normal(size=sizes[-1]))]
    n_blocks = 16
    stacked = _context_sds(vs, half_blocks, n_blocks)
    for v, row in zip(vs, stacked):
        assert np.array_equal(row, context_sd_oracle(v, half_blocks, n_blocks))
        assert np.array_equal(row, _context_sds([v], half_blocks, n_blocks)[0])
    long = np.concatenate([rng.normal(size=20_000), rng.normal(5, 3, 20_030)])  # blocks by reshaping
    assert np.array_equal(_context_sds([long], half_blocks, 700)[0], context_sd_oracle(long, half_blocks, 700))
