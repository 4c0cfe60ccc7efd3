"""Measure one sampled step: the captures and weights of the tracked layers to logged rows.

All matrices of a sample are measured in one batch with one host transfer
(:func:`ndtracker.spectra.measure_many`); if the batch fails, job by job, so one bad matrix costs
one row. Nothing here raises over a measurement: a failure is a NaN row with a ``status``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
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


def no_forward_message(hooks: str) -> str:
    """Why a layer has no activation row, with the compile advice only where it applies."""
    return NO_FORWARD.format(compile=COMPILED_LATER if hooks != "permanent" else "")


COMPILED_LATER = "; if you apply torch.compile after building the Tracker, pass hooks='permanent'"


NOT_REACHED = (
    "the probe's forward did not reach this layer (pass layers=[...] to leave it out, or a probe "
    "that runs through it)"
)


@dataclass
class Batch:
    """Matrices to measure together, and per row to log: (layer, space, index of its job)."""

    jobs: list[Job] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    known: dict[int, Result | None] = field(default_factory=dict)  # jobs measured already

    def extend(self, other: Batch) -> None:
        """Append ``other``'s jobs and rows (their job indices shifted past this batch's)."""
        offset = len(self.jobs)
        self.jobs += other.jobs
        self.keys += [(name, space, index + offset) for name, space, index in other.keys]
        self.known.update({index + offset: result for index, result in other.known.items()})


def activation_jobs(layers: list[TrackedLayer], options: Options, warn: Warn, missing: str | None = None) -> Batch:
    """The captured activations to measure; a layer with no capture is warned about (once).

    ``missing`` is the warning for a layer with no capture (default: no training forward).
    """
    if missing is None:
        missing = no_forward_message(options.hooks)
    batch = Batch()
    for layer in layers:
        if layer.measured is not None:  # measured in the hook (the sample held too many bytes)
            batch.known[len(batch.jobs)] = layer.measured[1]
            batch.keys.append((layer.name, "activation", len(batch.jobs)))
            batch.jobs.append(layer.measured[0])
        elif layer.capture is not None:
            batch.keys.append((layer.name, "activation", len(batch.jobs)))
            batch.jobs.append(_job(layer, "activation", layer.capture, options))
        else:
            warn(layer.name, "activation", missing)
    return batch


def weight_jobs(layers: list[TrackedLayer], options: Options) -> Batch:
    """The weights to measure, as they are now.

    A weight shared by several layers (tied embeddings) is measured once, logged under each.
    """
    batch = Batch()
    index_of: dict[int, int] = {}
    weights: list[torch.Tensor] = []  # parametrized weights are new tensors at each access
    for layer in layers:
        weight = layer.weight
        if weight is None:
            continue
        if id(weight) not in index_of:  # `weights` keeps each alive, so ids stay unique
            index_of[id(weight)] = len(batch.jobs)
            weights.append(weight)
            with torch.no_grad():  # a float32 2-D weight is then taken as it is (no operation)
                matrix = spectra.weight_matrix(weight)
            batch.jobs.append(_job(layer, "weight", matrix, options))
        batch.keys.append((layer.name, "weight", index_of[id(weight)]))
    return batch


def _job(layer: TrackedLayer, space: str, matrix: torch.Tensor, options: Options) -> Job:
    state = layer.streams.setdefault(space, StreamingSpectrum())
    estimator = spectra.choose_estimator(tuple(matrix.shape), options.metrics, options.estimator)
    return Job(matrix, estimator, options.metrics, state)


def measure_early(layers: list[TrackedLayer], options: Options, warn: Warn) -> None:
    """Measure these layers' captures now, in one batch; each keeps its result, not its capture.

    Called from the forward hook once a sampled step holds more than
    :data:`ndtracker.tracking.capture.HELD_BYTES` of captures (never raises).
    """
    batch = activation_jobs([layer for layer in layers if layer.capture is not None], options, warn)
    results = measure_jobs(batch.jobs, batch.keys, warn)
    by_name = {layer.name: layer for layer in layers}
    for name, _, index in batch.keys:
        job = batch.jobs[index]
        shape_only = torch.empty(job.matrix.shape, device="meta")
        by_name[name].measured = (Job(shape_only, job.estimator, job.metrics), results[index])
        by_name[name].capture = None


def measure_batch(batch: Batch, warn: Warn) -> list[Result | None]:
    """The results of a batch's jobs: the known ones as they are, the others measured together."""
    todo = [i for i in range(len(batch.jobs)) if i not in batch.known]
    position = {index: k for k, index in enumerate(todo)}
    keys = [(name, space, position[i]) for name, space, i in batch.keys if i in position]
    measured = measure_jobs([batch.jobs[i] for i in todo], keys, warn) if todo else []
    return [batch.known[i] if i in batch.known else measured[position[i]] for i in range(len(batch.jobs))]


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
