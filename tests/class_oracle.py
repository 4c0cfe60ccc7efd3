"""The class statistics of ``ndtracker.spectra.classes`` straight from their definitions (float64),
for the tests of the class geometry and of the labelled probe batch."""

from __future__ import annotations

import numpy as np


def class_statistics(h: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Every statistic straight from its definition (float64, eigendecompositions, pinv)."""
    values, counts = np.unique(y, return_counts=True)
    kept = values[counts >= 2]
    rows = np.isin(y, kept)
    h, y = h[rows], y[rows]
    mu = h.mean(0)
    means = np.stack([h[y == c].mean(0) for c in kept])
    residuals = h - means[np.searchsorted(kept, y)]
    within = residuals.T @ residuals / len(h)
    between = (means - mu).T @ (means - mu) / len(kept)
    eigenvalues, vectors = np.linalg.eigh(between)
    keep = eigenvalues > 1e-6 * eigenvalues[-1]
    pinv = (vectors[:, keep] / eigenvalues[keep]) @ vectors[:, keep].T
    radius, dimension, axes = [], [], []
    for c, mean in zip(kept, means):
        r = h[y == c] - mean
        radius.append(np.sqrt((r**2).sum(1).mean()) / np.linalg.norm(mean - mu))
        cov = r.T @ r / len(r)
        lam, vec = np.linalg.eigh(cov)
        dimension.append(lam.sum() ** 2 / (lam**2).sum())
        axes.append(vec[:, -1])
    distances = ((h[:, None, :] - means[None]) ** 2).sum(2)
    return {
        "nc1": np.trace(within @ pinv) / len(kept),
        "radius": np.mean(radius),
        "dimension": np.mean(dimension),
        "center_alignment": mean_abs_cosine(means - mu),
        "axes_alignment": mean_abs_cosine(np.stack(axes)),
        "ncc_accuracy": np.mean(kept[distances.argmin(1)] == y),
    }


def mean_abs_cosine(vectors: np.ndarray) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = np.abs(unit @ unit.T)
    count = len(vectors)
    return (cosines.sum() - np.trace(cosines)) / (count * (count - 1))
