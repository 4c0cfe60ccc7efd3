"""A sample's read-backs: class geometry and linear probes (with labels), condensation, gradient norms.

:func:`enqueue` starts the device work before the spectra of the sample are measured, so that on
a GPU the spectra's one synchronisation also waits for it; :func:`finish_all` then moves every
vector of the turn (class statistics, probe accuracies, condensation, the gradient norms the
backward left on the device) to the host in one transfer per device and names them: the
``classes`` table rows, the ``probe_accuracy`` cells of the activation rows and the
``condensation`` / ``directions`` / ``grad_norm`` cells of the weight rows. The math lives in
:mod:`ndtracker.spectra.classes`, :mod:`ndtracker.spectra.probes` and
:mod:`ndtracker.spectra.condensation`. Nothing here raises over a measurement: a failure is warned
about once and costs the figures of that sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ndtracker.spectra.classes import ClassGeometry, ClassPlan, finish, geometry_tensor, plan_classes, to_host
from ndtracker.spectra.condensation import condensation_tensor
from ndtracker.spectra.probes import probe_result, probe_tensor
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


@dataclass(frozen=True)
class Finished:
    """The host figures of one sample's read-backs.

    Attributes:
        classes: The ``classes`` rows (without step, wall_time and source).
        condensed: Per layer, ``(condensation, directions)``.
        accuracies: Per layer, the linear-probe accuracy (None where its status is not ``ok``).
        grad_norms: Per layer, its weight's gradient norm.
    """

    classes: list[dict[str, Any]] = field(default_factory=list)
    condensed: dict[str, tuple[float, float]] = field(default_factory=dict)
    accuracies: dict[str, float | None] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)

    def cells(self, layer: str, space: str) -> dict[str, Any]:
        """The extra cells of one (layer, space) row."""
        if space == "activation":
            return {"probe_accuracy": self.accuracies[layer]} if layer in self.accuracies else {}
        cells: dict[str, Any] = {}
        if layer in self.condensed:
            cells.update(zip(("condensation", "directions"), self.condensed[layer]))
        if layer in self.grad_norms:
            cells["grad_norm"] = self.grad_norms[layer]
        return cells


@dataclass
class Pending:
    """The enqueued device work of one sample, to be read by :func:`finish_all`."""

    classes: list[tuple[str, int, ClassPlan, torch.Tensor]] = field(default_factory=list)
    condensed: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    mismatched: list[tuple[str, int]] = field(default_factory=list)
    probes: list[tuple[str, int, torch.Tensor | str]] = field(default_factory=list)  # layer, rows, work
    gradients: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)  # owners, 0-d norm

    def vectors(self) -> list[torch.Tensor]:
        """Every device tensor to read, in the order :meth:`named` takes them."""
        return (
            [v for *_, v in self.classes] + [v for _, v in self.condensed]
            + [v for *_, v in self.probes if isinstance(v, torch.Tensor)] + [v.reshape(1) for _, v in self.gradients]
        )  # fmt: skip

    def named(self, host: Sequence[np.ndarray]) -> Finished:
        """The figures, from the host copies of :meth:`vectors`."""
        values = iter(host)
        rows = [_row(name, count, finish(next(values), plan)) for name, count, plan, _ in self.classes]
        rows += [_row(name, count, None) for name, count in self.mismatched]
        condensed = {name: (float(v[0]), float(v[1])) for (name, _), v in zip(self.condensed, values)}
        accuracies = {}
        for name, rows_, work in self.probes:
            result = probe_result(rows_, work, list(next(values)) if isinstance(work, torch.Tensor) else None)
            accuracies[name] = result.accuracy if result.status == "ok" else None
        norms = {name: norm for owners, norm in self._gradient_values(values) for name in owners}
        return Finished(rows, condensed, accuracies, norms)

    def _gradient_values(self, values: Iterator[np.ndarray]) -> list[tuple[list[str], float]]:
        """Each weight's norm, once per weight (a tied weight has several owners)."""
        return [(owners, float(next(values)[0])) for owners, _ in self.gradients]


def finish_all(pendings: Sequence[Pending], warn: Warn) -> list[Finished]:
    """Read every pending sample of a turn to the host at once (one transfer per device)."""
    try:
        vectors = [pending.vectors() for pending in pendings]
        flat = [v for each in vectors for v in each]
        host = to_host(flat) if flat else []
        found, start = [], 0
        for pending, each in zip(pendings, vectors):
            found.append(pending.named(host[start : start + len(each)]))
            start += len(each)
        return found
    except Exception as error:  # a monitor never stops training
        warn("*", "classes", f"class geometry, linear probes, condensation or gradient norms failed: {error!r}")
        return [Finished() for _ in pendings]


def enqueue(
    pending: Pending,
    layers: list[TrackedLayer],
    labels: np.ndarray | None,
    indices: dict[int, torch.Tensor],
    step: int,
    warn: Warn,
    *,
    linear_probes: bool = False,
    condensation: bool = False,
) -> Pending:
    """Start a sample's class geometry and linear probes (with ``labels``) and condensation on the device.

    Args:
        pending: Receives the work (returned).
        layers: The tracked layers, holding the sample's example rows.
        labels: The host labels of the sample's batch, or None.
        indices: Per batch size, the examples the capture kept (host tensors).
        step: The sample's step, for messages.
        warn: The Tracker's warn-once.
        linear_probes: Also fit each layer's linear probe (with labels).
        condensation: Also measure the weights' condensation.
    """
    with torch.no_grad():
        if labels is not None:
            _enqueue_classes(pending, layers, labels, indices, step, warn)
            if linear_probes:
                _enqueue_probes(pending, layers, labels, indices, warn)
        if condensation:
            _enqueue_condensation(pending, layers, warn)
    return pending


def _kept(labels: np.ndarray, layer: TrackedLayer, indices: dict[int, torch.Tensor]) -> np.ndarray:
    """The labels of the examples ``layer`` kept (the capture's shared subsample, if any)."""
    return labels if layer.batch not in indices else labels[indices[layer.batch].numpy()]


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
        kept = _kept(labels, layer, indices)
        try:
            plan = plan_classes(kept)
            pending.classes.append((layer.name, len(kept), plan, geometry_tensor(layer.examples, plan)))
        except Exception as error:
            warn(layer.name, "classes", f"class geometry failed: {error!r}")


def _enqueue_probes(
    pending: Pending, layers: list[TrackedLayer], labels: np.ndarray, indices: dict[int, torch.Tensor], warn: Warn
) -> None:
    """Each layer's linear probe on its example rows (the first rows' labels when it kept the first ones)."""
    classes = int(labels.max()) + 1 if labels.size else 1
    for layer in layers:
        rows = 0 if layer.examples is None else layer.examples.shape[0]
        kept = _kept(labels, layer, indices)
        if layer.examples is None or (layer.batch and len(labels) != layer.batch) or len(kept) < rows:
            continue  # the class geometry warned about the mismatch
        try:
            work = probe_tensor(layer.examples, torch.from_numpy(kept[:rows]), classes)
            pending.probes.append((layer.name, rows, work))
        except Exception as error:
            warn(layer.name, "probes", f"linear probe failed: {error!r}")


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
