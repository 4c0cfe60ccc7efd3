"""Synthetic report series with and without each diagnosed condition (helpers, not tests)."""

from __future__ import annotations

import numpy as np

from ndtracker.reports.model import Series

STEPS = np.arange(0, 500, 5)
T = np.arange(STEPS.size)


def series(layer: str, values, space: str = "activation", loss=None) -> Series:
    values = np.asarray(values, float)
    loss = np.full(values.size, np.nan) if loss is None else np.asarray(loss, float)
    return Series(layer, space, STEPS[: values.size], values, loss)


def noisy(values, seed: int, scale: float = 0.005) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return values * (1 + scale * rng.standard_normal(values.size))


def settling(height: float, seed: int) -> np.ndarray:
    """Expands early and settles: ``height (1 - 0.7 exp(-t/15))``."""
    return noisy(height * (1 - 0.7 * np.exp(-T / 15)), seed)


def healthy(widths=(40, 35, 30, 25, 20, 10)) -> list[Series]:
    return [series(f"l{i}", settling(w, i)) for i, w in enumerate(widths)]


def with_layer(run: list[Series], index: int, values) -> list[Series]:
    out = list(run)
    out[index] = series(run[index].layer, values, run[index].space)
    return out
