"""Write small synthetic runs (one curve per layer, activation space) for the report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndtracker.store import RunWriter

STEPS = np.arange(0, 1000, 5)


def write(folder: Path, curves: dict[str, np.ndarray], layers_info: list | None = None) -> None:
    info = {"options": {"every": 5}, "layers": layers_info if layers_info is not None else [
        {"name": name, "type": "Linear", "weight_shape": [64, 32]} for name in curves]}
    rows = []
    for layer, values in curves.items():
        for step, value in zip(STEPS, values):
            rows.append({"step": int(step), "layer": layer, "space": "activation", "stable_rank": float(value),
                         "rows": 64, "cols": 64, "estimator": "exact", "status": "ok",
                         "loss": float(3 * np.exp(-step / 200)), "wall_time": 1.7e9})
    writer = RunWriter(folder, run_info=info)
    writer.append(rows)
    writer.close()


def noisy(values: np.ndarray, seed: int = 0) -> np.ndarray:
    return values + 0.02 * np.random.default_rng(seed).standard_normal(values.size)
