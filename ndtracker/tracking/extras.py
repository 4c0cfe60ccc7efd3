"""The opt-in measurements of a sample: weight-gradient norms, linear probes, layer similarity.

Each is off by default and costs nothing then: no hook, no copy, no branch on a non-sampled step.

- ``gradients=True``: on steps whose weights are measured, a post-accumulate-grad hook on each
  tracked layer's weight keeps the Frobenius norm of its gradient (a 0-d tensor on the weight's
  device, no host sync) each time a backward accumulates into it; the last one, the gradient the
  optimizer sees, is read after the sample's measurement and logged as ``grad_norm`` of the
  weight rows. So a ``zero_grad()`` before :meth:`Tracker.step` loses nothing. The hooks are
  installed when the step before ends and removed when the sample is measured.
- ``similarity=True`` / ``probes=True``: the training forward also keeps, per layer, the first
  :data:`~ndtracker.spectra.similarity.DEFAULT_ROWS` examples as one row each
  (:func:`~ndtracker.spectra.similarity.example_matrix`: convolutions pooled per example), the
  same rows for every layer. Similarity logs the linear CKA of every pair of layers as the
  ``similarity`` table; probes log each layer's linear-probe accuracy against the labels passed
  to :meth:`Tracker.step` as ``probe_accuracy`` of the activation rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ndtracker.spectra.probes import probe_accuracies
from ndtracker.spectra.similarity import cka_matrix
from ndtracker.tracking.layers import TrackedLayer

Warn = Callable[[str, str, str], None]

NO_LABELS = (
    "probes=True but step() got no labels on a sampled step; pass tracker.step(loss=..., labels=y) "
    "with the batch's class labels (probe_accuracy is null until then)"
)


class GradientNorms:
    """Post-accumulate-grad hooks on the tracked weights, installed only around measured steps."""

    def __init__(self, layers: list[TrackedLayer], warn: Warn) -> None:
        self._layers, self._warn = layers, warn
        self._handles: list[Any] = []
        self._norms: dict[int, torch.Tensor] = {}
        self._owners: dict[int, list[str]] = {}

    def arm(self) -> None:
        """Install one hook per distinct trainable leaf weight (idempotent)."""
        if self._handles:
            return
        for layer in self._layers:
            weight = layer.weight
            if weight is None or not weight.requires_grad or not weight.is_leaf:
                continue
            key = id(weight)
            if key not in self._owners:
                self._owners[key] = []
                self._handles.append(weight.register_post_accumulate_grad_hook(self._hook(key)))
            self._owners[key].append(layer.name)

    def _hook(self, key: int) -> Callable[[torch.Tensor], None]:
        def keep_norm(parameter: torch.Tensor) -> None:
            if parameter.grad is not None:
                self._norms[key] = torch.linalg.vector_norm(parameter.grad.detach()).float()
        return keep_norm

    def take(self) -> dict[str, float]:
        """Each layer's last gradient norm (read to the host, one transfer per device), then disarm."""
        try:
            values = _to_floats(list(self._norms.values()))
            return {name: value for key, value in zip(self._norms, values) for name in self._owners[key]}
        finally:
            self.disarm()

    def disarm(self) -> None:
        """Remove every hook and forget the norms."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._norms.clear()
        self._owners.clear()


def _to_floats(tensors: list[torch.Tensor]) -> list[float]:
    by_device: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    out = [0.0] * len(tensors)
    for indices in by_device.values():
        for index, value in zip(indices, torch.stack([tensors[i] for i in indices]).cpu().tolist()):
            out[index] = float(value)
    return out


def probe_cells(layers: list[TrackedLayer], labels: Any) -> dict[str, float | None]:
    """Each layer's linear-probe accuracy on its kept examples (None where not ``ok``)."""
    kept = [layer for layer in layers if layer.examples is not None]
    if not kept:
        return {}
    results = probe_accuracies([layer.examples for layer in kept], torch.as_tensor(labels).detach().flatten())
    return {layer.name: (r.accuracy if r.status == "ok" else None) for layer, r in zip(kept, results)}


def similarity_rows(step: int, layers: list[TrackedLayer], now: float) -> list[dict[str, Any]]:
    """The ``similarity`` table's rows of one sample: every pair ``a <= b`` in model order."""
    kept = [layer for layer in layers if layer.examples is not None]
    if not kept:
        return []
    result = cka_matrix([layer.examples for layer in kept])
    rows = []
    for a, first in enumerate(kept):
        for b in range(a, len(kept)):
            status = result.pair_status(a, b)
            rows.append({
                "step": step, "layer_a": first.name, "layer_b": kept[b].name, "space": "activation",
                "cka": float(result.cka[a, b]) if status == "ok" else None, "rows": result.rows,
                "status": status, "wall_time": now,
            })  # fmt: skip
    return rows


class Extras:
    """The opt-in measurements of one Tracker, as its sampled steps use them.

    Args:
        layers: The tracked layers (their ``examples`` hold the kept rows).
        options: The Tracker's options (``gradients``, ``similarity``, ``probes`` are read).
        warn: The Tracker's warn-once.
    """

    def __init__(self, layers: list[TrackedLayer], options: Any, warn: Warn) -> None:
        self._layers, self._options, self._warn = layers, options, warn
        self._gradients = GradientNorms(layers, warn) if options.gradients else None

    def arm(self, step: int) -> None:
        """Before sampled step ``step`` runs: hook the weights' gradients if they will be logged."""
        if self._gradients is not None and self._options.weights_at(step):
            self._gradients.arm()

    def disarm(self) -> None:
        """Remove the gradient hooks (the layers' kept examples go with their captures)."""
        if self._gradients is not None:
            self._gradients.disarm()

    def finish(self, step: int, labels: Any, now: float) -> tuple[dict[tuple[str, str], dict], list[dict]]:
        """The sample's extra cells per (layer, space) and its similarity rows; never raises."""
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        if self._gradients is not None:
            for name, norm in self._guarded("gradients", self._gradients.take, {}).items():
                cells[(name, "weight")] = {"grad_norm": norm}
        if self._options.probes:
            if labels is None:
                self._warn("*", "probes", NO_LABELS)
            else:
                found = self._guarded("probes", lambda: probe_cells(self._layers, labels), {})
                for name, accuracy in found.items():
                    cells[(name, "activation")] = {"probe_accuracy": accuracy}
        rows: list[dict[str, Any]] = []
        if self._options.similarity:
            rows = self._guarded("similarity", lambda: similarity_rows(step, self._layers, now), [])
        return cells, rows

    def _guarded(self, what: str, compute: Callable[[], Any], default: Any) -> Any:
        try:
            return compute()
        except Exception as error:  # a monitor never stops training
            self._warn("*", what, f"{what} failed: {error!r}")
            return default
