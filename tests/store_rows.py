"""Rows, runs and part listings shared by the store and writer tests."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ndtracker import store


DTYPES = {
    "run_id": "str", "step": "int64", "layer": "str", "space": "str", "stable_rank": "float64",
    "participation_ratio": "float64", "effective_rank": "float64", "energy90": "Int64",
    "rows": "int64", "cols": "int64", "estimator": "str", "loss": "float64", "wall_time": "float64",
    "status": "str", "rank": "Int64", "grad_norm": "float64", "probe_accuracy": "float64",
    "source": "str", "condensation": "float64", "directions": "float64",
}  # fmt: skip


def row(step: int, layer: str = "fc", space: str = "activation", **values) -> dict:
    """Return a complete metrics row; ``values`` override the defaults."""
    base = {
        "step": step, "layer": layer, "space": space, "stable_rank": 1.5 + step,
        "participation_ratio": 2.5, "effective_rank": 3.5, "energy90": 4, "rows": 64, "cols": 32,
        "estimator": "exact", "loss": 0.25, "wall_time": 1.7e9 + step, "status": "ok",
    }  # fmt: skip
    return {**base, **values}


def grid(steps, layers=("a", "b"), spaces=("activation", "weight")) -> list[dict]:
    return [row(s, layer, space) for s in steps for layer in layers for space in spaces]


def expected(rows: list[dict], run_id: str) -> pd.DataFrame:
    """Build the frame `load` must return for ``rows`` of one run."""
    ordered = sorted(rows, key=lambda r: (r["step"], r["layer"], r["space"]))
    frame = pd.DataFrame([{**{k: None for k in DTYPES}, **r, "run_id": run_id} for r in ordered])
    return frame[list(DTYPES)].astype(DTYPES) if len(frame) else empty_metrics()


def empty_metrics() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in DTYPES.items()})


def write(folder, chunks: list[list[dict]], **options) -> store.RunWriter:
    """Write each chunk as one flush and close the writer."""
    writer = store.RunWriter(folder, run_info={"model": "Net"}, **options)
    for chunk in chunks:
        writer.append(chunk)
        writer.flush()
    writer.close()
    return writer


def parts(folder: Path, table: str = "metrics") -> list[str]:
    return sorted(os.listdir(folder / table))


def no_duplicates(frame: pd.DataFrame) -> bool:
    return not frame.duplicated(["run_id", "step", "layer", "space"]).any()
