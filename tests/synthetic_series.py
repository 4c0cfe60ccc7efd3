"""Synthetic series with known truth for the detector tests (fixed seeds, noise sd about 1)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ndtracker.detect import Jump, Phase, find_jumps


def steps(n: int, where: list[int], sizes: list[float], width: int = 0) -> np.ndarray:
    """Level shifts at ``where`` spread linearly over ``width`` samples (0: sharp)."""
    i = np.arange(n)
    return sum((s * np.clip((i - w + 1) / (width + 1), 0, 1) for w, s in zip(where, sizes)), np.zeros(n))


def ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """AR(1) noise with unit marginal sd."""
    e = rng.normal(0, math.sqrt(1 - phi**2), n)
    e[0] = rng.normal()
    for i in range(1, n):
        e[i] += phi * e[i - 1]
    return e


def null(kind: str, n: int = 2000, seed: int = 0) -> np.ndarray:
    """A jump-free series of one kind, noise sd about 1."""
    rng = np.random.default_rng(seed)
    i = np.arange(n, dtype=float)
    return {
        "gaussian": lambda: rng.normal(size=n),
        "ar1": lambda: ar1(n, 0.7, rng),
        "student-t2": lambda: rng.standard_t(2, n),
        "heteroscedastic": lambda: rng.normal(size=n) * np.exp(np.log(3) * np.sin(2 * np.pi * i / 1000)),
        "drift": lambda: 0.3 * i + rng.normal(size=n),
        "exp-decay": lambda: 60 * np.exp(-i / 300) + rng.normal(size=n),
        "log-growth": lambda: 20 * np.log1p(i / 30) + rng.normal(size=n),
        "kinks": lambda: np.interp(i, [0, 200, 1000, n], [100, 30, 45, 45]) + rng.normal(size=n),
    }[kind]() + 50.0


def trajectory(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seed figure: collapse 100 -> 30 (first 10 %), expansion to 45 (to 50 %), plateau; noise 1.

    Returns the series and its true labels (-1 collapse, +1 expansion, 0 stabilization).
    """
    knots, levels = [0, 0.1 * (n - 1), 0.5 * (n - 1), n - 1], [100, 30, 45, 45]
    clean = np.interp(np.arange(n), knots, levels)
    labels = np.where(np.arange(n) < 0.1 * (n - 1), -1, np.where(np.arange(n) < 0.5 * (n - 1), 1, 0))
    return clean + np.random.default_rng(seed).normal(size=n), labels


CODE = {"collapse": -1, "stabilization": 0, "expansion": 1}


def labels_of(phases: list[Phase]) -> np.ndarray:
    """Per-position label codes of a phase list."""
    return np.concatenate([np.full(p.stop - p.start, CODE[p.kind]) for p in phases])


def quiet_jumps(values: np.ndarray, **options: float) -> list[Jump]:
    """find_jumps with the non-finite warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return find_jumps(values, **options)
