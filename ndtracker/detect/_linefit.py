"""Least-squares fits of straight and once-bent lines, shared by jumps and phases.

Each fit comes from sums (or prefix sums) of ``1, x, x^2, y, xy, y^2``, so a fit over any range,
or a bent line for every kink position, costs O(1) after one pass over the data.
"""

from __future__ import annotations

import numpy as np


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


def _prefix_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cumulative weighted sums of 1, x, x^2, y, xy, y^2 (columns), row 0 all zeros."""
    terms = np.stack([w, w * x, w * x * x, w * y, w * x * y, w * y * y], axis=1)
    return np.concatenate([np.zeros((1, 6)), np.cumsum(terms, axis=0)])


def _rss_table(prefix: np.ndarray) -> np.ndarray:
    """Residual sums of squares of a line over every block range: entry ``[stop, start]``; 0 for
    one block, inf where ``stop <= start``."""
    columns = np.ascontiguousarray(prefix.T)
    n, sx, sxx, sy, sxy, syy = columns[:, :, None] - columns[:, None, :]
    with np.errstate(all="ignore"):
        rss = np.maximum(syy - sy * sy / n - (sxy - sx * sy / n) ** 2 / (sxx - sx * sx / n), 0.0)
    rss[~np.tri(rss.shape[0], k=-2, dtype=bool)] = np.inf
    single = np.arange(rss.shape[0] - 1)
    rss[single + 1, single] = 0.0
    return rss


def _slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares slope and the weighted sum of squares of ``x`` about its mean."""
    xc = x - np.average(x, weights=w)
    sxx = float(np.sum(w * xc * xc))
    return float(np.sum(w * xc * y) / sxx), sxx


def _residuals(x: np.ndarray, y: np.ndarray, w: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Residuals of a weighted least-squares line on each span of three blocks or more."""
    parts = [np.zeros(0)]
    for lo, hi in (span for span in spans if span[1] - span[0] >= 3):
        xs, ys, ws = x[lo:hi], y[lo:hi], w[lo:hi]
        xm, ym = np.average(xs, weights=ws), np.average(ys, weights=ws)
        slope = np.sum(ws * (xs - xm) * (ys - ym)) / np.sum(ws * (xs - xm) ** 2)
        parts.append(ys - ym - slope * (xs - xm))
    return np.concatenate(parts)
