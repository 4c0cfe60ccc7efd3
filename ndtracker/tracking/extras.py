"""The opt-in measurements of a sample: weight-gradient norms and layer similarity.

Each is off by default and costs nothing then: no hook, no copy, no branch on a non-sampled step.

- ``gradients=True``: on steps whose weights are measured, a post-accumulate-grad hook on each
  tracked layer's weight keeps the Frobenius norm of its gradient (a 0-d tensor on the weight's
  device, no host sync) each time a backward accumulates into it; the last one, the gradient the
  optimizer sees, stays on the device until the sample's read-back after its spectra (one
  transfer with the class geometry and probes, :mod:`~ndtracker.tracking.geometry`) and is
  logged as ``grad_norm`` of the weight rows. So a ``zero_grad()`` before :meth:`Tracker.step` loses nothing. The hooks are
  installed when the step before ends and removed when the sample is measured.
- ``similarity=True`` / ``linear_probes=True``: the sample's forward (the training forward, or
  the probe batch's) also keeps, per layer, its examples as one row each (the first
  :data:`~ndtracker.spectra.similarity.DEFAULT_ROWS` until labels are expected, then the class
  geometry's rows; convolutions pooled per example), the same rows for every layer. Similarity
  logs the linear CKA of every pair of layers as the ``similarity`` table, from the rows taken
  (:func:`kept_examples`) before the sample's captures are dropped; the linear probes are
  enqueued with the class geometry (:mod:`~ndtracker.tracking.geometry`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ndtracker.spectra.similarity import cka_matrix
from ndtracker.tracking.layers import TrackedLayer

Warn = Callable[[str, str, str], None]

NO_LABELS = (
    "linear_probes=True but step() got no labels on a sampled step; pass tracker.step(loss=..., labels=y) "
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

    def take(self) -> list[tuple[list[str], torch.Tensor]]:
        """Each weight's last gradient norm (a 0-d tensor left on its device) and the layers it
        belongs to; then disarm."""
        try:
            return [(list(self._owners[key]), norm) for key, norm in self._norms.items()]
        finally:
            self.disarm()

    def disarm(self) -> None:
        """Remove every hook and forget the norms."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._norms.clear()
        self._owners.clear()


def kept_examples(layers: list[TrackedLayer]) -> list[tuple[str, torch.Tensor]]:
    """Each layer's example rows of the sample in progress, kept past the drop of its captures."""
    return [(layer.name, layer.examples) for layer in layers if layer.examples is not None]


def similarity_rows(step: int, kept: list[tuple[str, torch.Tensor]], now: float) -> list[dict[str, Any]]:
    """The ``similarity`` table's rows of one sample: every pair ``a <= b`` in model order."""
    if not kept:
        return []
    result = cka_matrix([examples for _, examples in kept])
    rows = []
    for a, (first, _) in enumerate(kept):
        for b in range(a, len(kept)):
            status = result.pair_status(a, b)
            rows.append({
                "step": step, "layer_a": first, "layer_b": kept[b][0], "space": "activation",
                "cka": float(result.cka[a, b]) if status == "ok" else None, "rows": result.rows,
                "status": status, "wall_time": now,
            })  # fmt: skip
    return rows


class Extras:
    """The opt-in measurements of one Tracker, as its sampled steps use them.

    Args:
        layers: The tracked layers (their ``examples`` hold the kept rows).
        options: The Tracker's options (``gradients`` and ``similarity`` are read).
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

    def gradients(self) -> list[tuple[list[str], torch.Tensor]]:
        """The gradient norms of the sample that ends (left on the device), then disarm; never raises."""
        if self._gradients is None:
            return []
        return self.guarded("gradients", self._gradients.take, [])

    def similarity(self, step: int, kept: list[tuple[str, torch.Tensor]], now: float) -> list[dict[str, Any]]:
        """The sample's ``similarity`` rows from its kept examples ([] unless asked); never raises."""
        if not self._options.similarity:
            return []
        return self.guarded("similarity", lambda: similarity_rows(step, kept, now), [])

    def guarded(self, what: str, compute: Callable[[], Any], default: Any) -> Any:
        try:
            return compute()
        except Exception as error:  # a monitor never stops training
            self._warn("*", what, f"{what} failed: {error!r}")
            return default
