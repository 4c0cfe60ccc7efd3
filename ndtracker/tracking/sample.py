"""Measure one sampled step: the captures and weights of the tracked layers to logged rows.

All matrices of a sample are measured in one batch with one host transfer
(:func:`ndtracker.spectra.measure_many`); if the batch fails, job by job, so one bad matrix costs
one row. Nothing here raises over a measurement: a failure is a NaN row with a ``status``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ndtracker import spectra
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.spectra import Job, Result, StreamingSpectrum, full_precision
from ndtracker.vocabulary import METRICS, OK

Warn = Callable[[str, str, str], None]
Key = tuple[str, str, int]  # (layer, space, index of its job)

NO_FORWARD = (
    "no training forward pass in a sampled step (forwards in eval mode or under torch.no_grad() "
    "are not captured: pass track_eval=True to measure them, or layers=[...] to leave this layer "
    "out{compile})"
)
COMPILED_LATER = "; if you apply torch.compile after building the Tracker, pass hooks='permanent'"


def sample_jobs(
    layers: list[TrackedLayer], options: Options, with_weights: bool, warn: Warn
) -> tuple[list[Job], list[Key]]:
    """The matrices to measure, and per row to log: (layer, space, index of its job).

    A weight shared by several layers (tied embeddings) is measured once, logged under each.
    A layer with no capture while activations are measured is warned about (once).
    """
    jobs: list[Job] = []
    keys: list[Key] = []
    weight_jobs: dict[int, int] = {}
    weights: list[torch.Tensor] = []  # parametrized weights are new tensors at each access
    for layer in layers:
        if layer.capture is not None:
            keys.append((layer.name, "activation", len(jobs)))
            jobs.append(_job(layer, "activation", layer.capture, options))
        elif "activation" in options.spaces:
            advice = COMPILED_LATER if options.hooks != "permanent" else ""
            warn(layer.name, "activation", NO_FORWARD.format(compile=advice))
        weight = layer.weight if with_weights else None
        if weight is None:
            continue
        if id(weight) not in weight_jobs:  # `weights` keeps each alive, so ids stay unique
            weight_jobs[id(weight)] = len(jobs)
            weights.append(weight)
            jobs.append(_job(layer, "weight", spectra.weight_matrix(weight), options))
        keys.append((layer.name, "weight", weight_jobs[id(weight)]))
    return jobs, keys


def _job(layer: TrackedLayer, space: str, matrix: torch.Tensor, options: Options) -> Job:
    state = layer.streams.setdefault(space, StreamingSpectrum())
    estimator = spectra.choose_estimator(tuple(matrix.shape), options.metrics, options.estimator)
    return Job(matrix, estimator, options.metrics, state)


def measure_jobs(jobs: list[Job], keys: list[Key], warn: Warn) -> list[Result | None]:
    """All jobs in one batch; if the batch fails, job by job so one bad matrix costs one row.

    Returns:
        Per job its :class:`~ndtracker.spectra.Result`, or None if measuring it failed.
    """
    with torch.no_grad(), full_precision({job.matrix.device.type for job in jobs}):
        try:
            return list(spectra.measure_many(jobs))
        except Exception:
            return _measure_one_by_one(jobs, {i: (name, space) for name, space, i in keys}, warn)


def _measure_one_by_one(jobs: list[Job], owners: dict[int, tuple[str, str]], warn: Warn) -> list[Result | None]:
    results: list[Result | None] = []
    for index, job in enumerate(jobs):
        try:
            results.extend(spectra.measure_many([job]))
        except Exception as error:
            warn(*owners[index], f"measurement failed: {error!r}")
            results.append(None)
    return results


def log_row(
    step: int, key: tuple[str, str], job: Job, result: Result | None, metrics: frozenset[str], warn: Warn
) -> dict[str, Any]:
    """The logged row of one (layer, space) of a sample, without ``loss`` and ``wall_time``.

    A row whose metrics are NaN for a reason other than an empty or all-zero matrix is warned
    about (once per layer and space).
    """
    rows, cols = job.matrix.shape
    values, status = values_and_status(result, rows, cols)
    if status not in (OK, "zero", "empty"):
        warn(*key, f"metrics are NaN at step {step} ({status})")
    row: dict[str, Any] = {"step": step, "layer": key[0], "space": key[1], "rows": rows, "cols": cols}
    for name, value in zip(METRICS, values):
        row[name] = metric_cell(name, value, name in metrics)
    row.update(estimator=job.estimator if result is None else result.estimator, status=status)
    return row


def values_and_status(result: Result | None, rows: int, cols: int) -> tuple[tuple[float, ...], str]:
    """The four metric values of a result and its ``status`` (NaN metrics unless ``ok``)."""
    nan = (math.nan,) * len(METRICS)
    if result is None:
        return nan, "failed"
    if rows == 0 or cols == 0:
        return nan, "empty"
    if not result.finite:
        return nan, "nonfinite"
    if not result.energy > 0:
        return nan, "zero"
    return result.metrics, OK


def metric_cell(name: str, value: float, computed: bool) -> float | int | None:
    """A metric's logged cell: None when not computed; ``energy90`` as an int (None for NaN)."""
    if not computed:
        return None
    if name == "energy90":
        return None if math.isnan(value) else int(round(value))
    return value


def loss_value(loss: float | torch.Tensor | None, warn: Warn) -> float | None:
    """The loss as a float (a tensor is read here, on sampled steps only), or None.

    A loss that is not one number (a per-example loss, a string) is logged as null, with a warning
    (once) saying what to pass instead.
    """
    if loss is None:
        return None
    if isinstance(loss, torch.Tensor) and loss.numel() != 1:
        warn("*", "loss", f"loss has shape {tuple(loss.shape)}, not one number: it is logged as null; "
                          "pass a scalar such as loss.mean()")  # fmt: skip
        return None
    try:
        return float(loss.detach().float().item() if isinstance(loss, torch.Tensor) else loss)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        warn("*", "loss", f"loss={loss!r} is not a number: it is logged as null; pass a float or a scalar tensor")
        return None
