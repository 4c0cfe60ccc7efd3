"""A sample's class geometry (with labels) and condensation (opt-in): enqueued, then read at once.

:func:`enqueue` starts the device work before the spectra of the sample are measured, so that
on a GPU the spectra's one synchronisation also waits for it; :meth:`Pending.finish` then moves
every vector to the host in one transfer per device and names them: the ``classes`` table rows
and the ``condensation`` / ``directions`` cells of the weight rows. The math lives in
:mod:`ndtracker.spectra.classes` and :mod:`ndtracker.spectra.condensation`. Nothing here raises
over a measurement: a failure is warned about once and costs the figures of that sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ndtracker.spectra.classes import ClassGeometry, ClassPlan, finish, geometry_tensor, plan_classes, to_host
from ndtracker.spectra.condensation import condensation_tensor
from ndtracker.tracking.layers import TrackedLayer, layer_bias

Warn = Callable[[str, str, str], None]

BAD_LABELS = (
    "labels must be integer class indices, one per example (a 1-D tensor, array or list), got "
    "{}; no class geometry is measured for them"
)
MISMATCH = (
    "{} labels for {} examples (rows are examples: sequence outputs are averaged over tokens, "
    "convolution outputs over positions); no class geometry for this layer at step {}"
)


def host_labels(labels: Any, warn: Warn) -> np.ndarray | None:
    """The labels as a 1-D int64 host array (one transfer if on a GPU), or None if unusable."""
    if labels is None:
        return None
    try:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        array = np.asarray(labels)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise ValueError(f"shape {array.shape} and dtype {array.dtype}")
        return array.astype(np.int64)
    except Exception as error:
        warn("*", "labels", BAD_LABELS.format(error))
        return None


@dataclass
class Pending:
    """The enqueued device work of one sample, to be read by :meth:`finish`."""

    classes: list[tuple[str, int, ClassPlan, torch.Tensor]] = field(default_factory=list)
    condensed: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    mismatched: list[tuple[str, int]] = field(default_factory=list)

    def finish(self, warn: Warn) -> tuple[list[dict[str, Any]], dict[str, tuple[float, float]]]:
        """One transfer; the ``classes`` rows (without step and wall_time) and condensation per layer."""
        try:
            vectors = [v for *_, v in self.classes] + [v for _, v in self.condensed]
            host = to_host(vectors)
        except Exception as error:  # a monitor never stops training
            warn("*", "classes", f"class geometry or condensation failed: {error!r}")
            return [], {}
        measured = zip(self.classes, host[: len(self.classes)])
        rows = [_row(name, count, finish(values, plan)) for (name, count, plan, _), values in measured]
        rows += [_row(name, count, None) for name, count in self.mismatched]
        weights = zip(self.condensed, host[len(self.classes) :])
        condensed = {name: (float(values[0]), float(values[1])) for (name, _), values in weights}
        return rows, condensed


def enqueue(
    layers: list[TrackedLayer],
    labels: np.ndarray | None,
    indices: dict[int, torch.Tensor],
    condensation: bool,
    step: int,
    warn: Warn,
) -> Pending:
    """Start a sample's class geometry (when ``labels``) and condensation (when asked) on the device.

    Args:
        layers: The tracked layers, holding the sample's example rows.
        labels: The host labels of the sample's batch, or None.
        indices: Per batch size, the examples the capture kept (host tensors).
        condensation: Whether to measure the weights' condensation.
        step: The sample's step, for messages.
        warn: The Tracker's warn-once.
    """
    pending = Pending()
    with torch.no_grad():
        if labels is not None:
            _enqueue_classes(pending, layers, labels, indices, step, warn)
        if condensation:
            _enqueue_condensation(pending, layers, warn)
    return pending


def _enqueue_classes(
    pending: Pending, layers: list[TrackedLayer], labels: np.ndarray, indices: dict[int, torch.Tensor],
    step: int, warn: Warn,
) -> None:
    for layer in layers:
        if layer.examples is None:
            continue
        if len(labels) != layer.batch:
            warn(layer.name, "classes", MISMATCH.format(len(labels), layer.batch, step))
            pending.mismatched.append((layer.name, layer.examples.shape[0]))
            continue
        kept = labels if layer.batch not in indices else labels[indices[layer.batch].numpy()]
        try:
            plan = plan_classes(kept)
            pending.classes.append((layer.name, len(kept), plan, geometry_tensor(layer.examples, plan)))
        except Exception as error:
            warn(layer.name, "classes", f"class geometry failed: {error!r}")


def _enqueue_condensation(pending: Pending, layers: list[TrackedLayer], warn: Warn) -> None:
    done: dict[int, torch.Tensor] = {}
    for layer in layers:
        weight = layer.weight
        if weight is None:
            continue
        try:
            if id(weight) not in done:
                done[id(weight)] = condensation_tensor(weight, layer_bias(layer.module))
            pending.condensed.append((layer.name, done[id(weight)]))
        except Exception as error:
            warn(layer.name, "weight", f"condensation failed: {error!r}")


def _row(layer: str, rows: int, geometry: ClassGeometry | None) -> dict[str, Any]:
    if geometry is None:
        nan = dict.fromkeys(("nc1", "radius", "dimension", "center_alignment", "axes_alignment",
                             "ncc_accuracy"), math.nan)  # fmt: skip
        return {"layer": layer, "space": "activation", "rows": rows, **nan, "status": "mismatch"}
    return {"layer": layer, "space": "activation", "rows": rows, **geometry.as_row()}
