"""The report's depth and relation tables: tunnel onset, probe saturation, correlations, CKA.

Pure pandas and numpy over what :mod:`~ndtracker.reports.build` loaded: the report's series (one
per layer and space, in depth order), the ``grad_norm`` and ``probe_accuracy`` columns when the run
logged them, and the ``similarity`` table. Definitions of the onset and of saturation over depth
are in :mod:`ndtracker.detect.depth`.

- :func:`tunnel_table`: per sampled step and space, the tunnel onset over the tracked layers
  (``onset_index``, ``onset_layer``; null where there is no tunnel) and, with probes, the layer
  where probe accuracy stops rising over depth (``probe_saturation_index``/``_layer``).
- :func:`tunnel_formed`: the step from which the onset kept its final value.
- :func:`correlations`: per layer and space, Spearman and Pearson correlation of the metric with
  the loss and with the layer's weight-gradient norm over the sampled steps.
- :func:`cka_at`: the symmetric CKA matrix of the tracked layers at one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ndtracker import store
from ndtracker.detect.depth import onset_settled, saturation_index, tunnel_onset
from ndtracker.reports import diagnostics

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Series

__all__ = [
    "MIN_CORRELATION_SAMPLES", "TUNNEL_COLUMNS", "CORRELATION_COLUMNS", "depth_profile",
    "tunnel_table", "tunnel_formed", "correlations", "cka_at", "nearest_step", "science_frames",
    "empty_tunnel", "empty_correlations", "empty_similarity", "layer_widths",
]  # fmt: skip

MIN_CORRELATION_SAMPLES = 3
"""Fewer samples with both values finite give NaN correlations."""

TUNNEL_COLUMNS = [
    "step", "space", "metric", "onset_index", "onset_layer", "probe_saturation_index", "probe_saturation_layer",
]  # fmt: skip
CORRELATION_COLUMNS = [
    "layer", "space", "metric", "samples", "spearman_loss", "pearson_loss", "grad_samples",
    "spearman_grad_norm", "pearson_grad_norm",
]  # fmt: skip


def empty_tunnel() -> pd.DataFrame:
    """A tunnel table with no rows."""
    return pd.DataFrame({name: pd.Series([], dtype=_tunnel_dtype(name)) for name in TUNNEL_COLUMNS})


def empty_correlations() -> pd.DataFrame:
    """A correlations table with no rows."""
    return pd.DataFrame({name: pd.Series([], dtype="object" if name in ("layer", "space", "metric") else "float64")
                         for name in CORRELATION_COLUMNS})  # fmt: skip


def _tunnel_dtype(name: str) -> str:
    return {"step": "int64", "onset_index": "Int64", "probe_saturation_index": "Int64"}.get(name, "object")


def depth_profile(series: Sequence[Series], space: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The metric of each layer (in the series' depth order) at each sampled step of one space.

    Returns:
        ``(layers, steps, grid)``: layer names (L), the union of their steps (n, increasing) and
        the metric, shape ``(L, n)``, NaN where a layer has no sample at a step.
    """
    chosen = [s for s in series if s.space == space]
    steps = np.unique(np.concatenate([s.steps for s in chosen])) if chosen else np.zeros(0, np.int64)
    grid = np.full((len(chosen), steps.size), np.nan)
    for row, item in enumerate(chosen):
        grid[row, np.searchsorted(steps, item.steps)] = item.values
    return [s.layer for s in chosen], steps, grid


def tunnel_table(series: Sequence[Series], metric: str, probes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per sampled step and space, the tunnel onset over depth (and probe saturation, if logged).

    Args:
        series: The report's series, in depth order.
        metric: The metric the series hold.
        probes: Rows ``step, layer, space, probe_accuracy`` (activation rows carry it), or None.

    Returns:
        Columns :data:`TUNNEL_COLUMNS`; ``onset_index`` counts tracked layers from 0 (the
        report's layers in that space), nullable, as are the probe columns.
    """
    frames = []
    for space in dict.fromkeys(s.space for s in series):
        layers, steps, grid = depth_profile(series, space)
        if len(layers) < 2:
            continue
        onsets = [tunnel_onset(grid[:, j]) for j in range(steps.size)]
        saturation = _probe_saturation(probes, space, layers, steps)
        frames.append(pd.DataFrame({
            "step": steps.astype(np.int64), "space": space, "metric": metric,
            "onset_index": pd.array(onsets, dtype="Int64"),
            "onset_layer": _names(layers, onsets),
            "probe_saturation_index": pd.array(saturation, dtype="Int64"),
            "probe_saturation_layer": _names(layers, saturation),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else empty_tunnel()


def _names(layers: list[str], indices: list[int | None]) -> pd.Series:
    return pd.Series([None if k is None else layers[k] for k in indices], dtype=object)


def _probe_saturation(
    probes: pd.DataFrame | None, space: str, layers: list[str], steps: np.ndarray
) -> list[int | None]:
    if probes is None or space != "activation" or not len(probes):
        return [None] * steps.size
    rows = probes[(probes["space"] == space) & probes["layer"].isin(layers)]
    table = rows.pivot_table(index="layer", columns="step", values="probe_accuracy", aggfunc="last")
    table = table.reindex(index=layers, columns=steps)
    return [saturation_index(table[step].to_numpy(float)) if table[step].notna().any() else None for step in steps]


def tunnel_formed(tunnel: pd.DataFrame, space: str = "activation") -> int | None:
    """The step from which the tunnel onset of ``space`` kept its final value, or None."""
    rows = tunnel[tunnel["space"] == space].sort_values("step")
    onsets = [None if pd.isna(v) else int(v) for v in rows["onset_index"]]
    return onset_settled(rows["step"].to_numpy(), onsets)


def correlations(series: Sequence[Series], metric: str, gradients: pd.DataFrame | None = None) -> pd.DataFrame:
    """Spearman and Pearson correlation of each series with the loss and with the gradient norm.

    Args:
        series: The report's series.
        metric: Their metric.
        gradients: Rows ``step, layer, grad_norm`` (the layer's weight gradient), or None. Both
            spaces of a layer are correlated with its weight's gradient norm at the same steps.

    Returns:
        Columns :data:`CORRELATION_COLUMNS`: ``samples`` (``grad_samples``) counts the steps with
        both values finite; correlations are NaN with fewer than :data:`MIN_CORRELATION_SAMPLES`
        or when either side is constant.
    """
    norms = _gradient_lookup(gradients)
    rows = []
    for item in series:
        grad = norms.get(item.layer)
        grad_values = np.full(item.steps.size, np.nan) if grad is None else grad.reindex(item.steps).to_numpy(float)
        loss_pair, grad_pair = _pair(item.values, item.loss), _pair(item.values, grad_values)
        rows.append({
            "layer": item.layer, "space": item.space, "metric": metric, "samples": loss_pair[0],
            "spearman_loss": loss_pair[1], "pearson_loss": loss_pair[2], "grad_samples": grad_pair[0],
            "spearman_grad_norm": grad_pair[1], "pearson_grad_norm": grad_pair[2],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS) if rows else empty_correlations()


def _gradient_lookup(gradients: pd.DataFrame | None) -> dict[str, pd.Series]:
    if gradients is None or not len(gradients):
        return {}
    rows = gradients.dropna(subset=["grad_norm"])
    return {layer: part.groupby("step")["grad_norm"].last() for layer, part in rows.groupby("layer", sort=False)}


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[int, float, float]:
    """(samples, Spearman, Pearson) of the positions where both are finite."""
    keep = np.isfinite(x) & np.isfinite(y)
    count = int(keep.sum())
    if count < MIN_CORRELATION_SAMPLES:
        return count, np.nan, np.nan
    a, b = x[keep], y[keep]
    ranks = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return count, _pearson(*ranks), _pearson(a, b)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else np.nan


def cka_at(similarity: pd.DataFrame, step: int, layers: Sequence[str]) -> np.ndarray:
    """The symmetric CKA matrix of ``layers`` at ``step`` (NaN where a pair was not logged or ok).

    Args:
        similarity: The ``similarity`` table (``step, layer_a, layer_b, cka``).
        step: A logged step.
        layers: The layers, in the order of the matrix.
    """
    index = {name: i for i, name in enumerate(layers)}
    out = np.full((len(layers), len(layers)), np.nan)
    rows = similarity[similarity["step"] == step]
    for a, b, value in zip(rows["layer_a"], rows["layer_b"], rows["cka"]):
        if a in index and b in index:
            out[index[a], index[b]] = out[index[b], index[a]] = value
    return out


def nearest_step(steps: Sequence[int], wanted: int) -> int:
    """The logged step closest to ``wanted`` (the earlier on a tie)."""
    array = np.asarray(steps)
    return int(array[np.argmin(np.abs(array - wanted))])


def science_frames(
    run_dir: str, info: dict, run_ids: Sequence[str], metric: str, series: Sequence[Series],
    rank: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The report's ``tunnel``, ``correlations``, ``diagnostics`` and ``similarity`` tables.

    Reads the ``grad_norm`` and ``probe_accuracy`` columns and the ``similarity`` table of the
    reported runs (``run_ids``: one, or runs that resume each other) only when the run's options
    say they were logged; ``rank``: as for `~ndtracker.reports.report`.
    """
    options = info.get("options", {})
    extra = None
    if options.get("gradients") or options.get("probes"):
        columns = ["step", "layer", "space", "grad_norm", "probe_accuracy"]
        extra = store.load(run_dir, run_id=list(run_ids), columns=columns, rank=rank)
    gradients = None if extra is None else extra[extra["space"] == "weight"]
    similarity = _similarity(run_dir, run_ids) if options.get("similarity") else None
    return {
        "tunnel": tunnel_table(series, metric, extra),
        "correlations": correlations(series, metric, gradients),
        "diagnostics": diagnostics.diagnose(series, metric, layer_widths(info)),
        "similarity": similarity if similarity is not None else empty_similarity(),
    }


def _similarity(run_dir: str, run_ids: Sequence[str]) -> pd.DataFrame:
    columns = ["step", "layer_a", "layer_b", "space", "cka", "rows", "status"]
    return store.load(run_dir, run_id=list(run_ids), table="similarity", columns=columns)


def empty_similarity() -> pd.DataFrame:
    """A similarity table with no rows."""
    names = {"step": "int64", "layer_a": "object", "layer_b": "object", "space": "object", "cka": "float64",
             "rows": "int64", "status": "object"}  # fmt: skip
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in names.items()})


def layer_widths(info: dict) -> dict[tuple[str, str], int]:
    """``(layer, space) -> width`` from the run's recorded weight shapes (output features for
    activations, the smaller side of the weight matrix for weights)."""
    widths = {}
    for layer in info.get("layers", []):
        shape = layer.get("weight_shape")
        if shape:
            widths[(str(layer["name"]), "activation")] = int(shape[0])
            widths[(str(layer["name"]), "weight")] = min(int(shape[0]), int(np.prod(shape[1:], dtype=np.int64)))
    return widths
