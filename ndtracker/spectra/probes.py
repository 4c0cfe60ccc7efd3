"""Linear probes: how well a closed-form ridge classifier reads the labels off a layer; pure torch.

The probe of one layer on one sample, fitted and scored on the probe rows (one row per example, as
:func:`ndtracker.spectra.similarity.example_matrix` gives them):

- **Split**: a fixed random half of the rows (:func:`split`: a permutation drawn with seed 0,
  its first ``ceil(n/2)`` rows) fits the classifier and the other half scores it, so neither a
  batch sorted by label nor one with alternating labels puts a class on one side only.
- **Targets**: one-hot rows of the ``C`` classes (labels are integers ``0 <= y < C``, ``C`` the
  largest label seen plus one).
- **Fit**: features and targets centred on the fit rows (an intercept), weights
  ``W = (XᵀX + λI)⁻¹ XᵀY``, computed as ``Xᵀ(XXᵀ + λI)⁻¹Y`` when there are fewer fit rows than
  features (the same solution, a smaller system). ``λ = ridge · tr(XᵀX) / p`` with ``ridge``
  = :data:`RIDGE` by default, so the probe does not depend on the features' scale.
- **Score**: accuracy of ``argmax`` of the scored rows' predictions.

Statuses (accuracy NaN unless ``ok``): ``few_rows`` (fewer than :data:`MIN_PROBE_ROWS` rows),
``nonfinite``, ``failed`` (the solve raised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "RIDGE", "MIN_PROBE_ROWS", "ProbeResult", "probe_accuracy", "probe_accuracies", "probe_tensor", "probe_result",
    "split",
]  # fmt: skip

RIDGE = 1e-3
"""Ridge strength relative to the mean feature variance of the fit rows."""

MIN_PROBE_ROWS = 4
"""The fewest rows a probe is fitted and scored on (two fit, two scored)."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe: its accuracy on the scored rows (NaN unless ``status`` is ``ok``)."""

    accuracy: float
    status: str
    fit_rows: int
    scored_rows: int


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, *, ridge: float = RIDGE) -> ProbeResult:
    """Fit a ridge classifier on a fixed half of the rows of ``features``, score it on the other.

    Args:
        features: ``(n, p)`` float tensor, one row per example.
        labels: ``(n,)`` integer class labels (a longer tensor is cut to ``n`` rows).
        ridge: Ridge strength relative to the mean feature energy (positive; default
            :data:`RIDGE`).

    Returns:
        The :class:`ProbeResult`.

    Raises:
        ValueError: ``labels`` has fewer rows than ``features`` or is not integer, or ``ridge``
            is not positive.

    Example:
        >>> x = torch.eye(4).repeat(4, 1)
        >>> probe_accuracy(x, torch.arange(4).repeat(4)).accuracy
        1.0
    """
    return probe_accuracies([features], labels, ridge=ridge)[0]


def probe_accuracies(
    features: list[torch.Tensor], labels: torch.Tensor, *, ridge: float = RIDGE
) -> list[ProbeResult]:
    """:func:`probe_accuracy` of each layer's features against the same labels, one host transfer.

    Each matrix is probed on its own device; all accuracies come to the host together.

    Raises:
        ValueError: As for :func:`probe_accuracy`.
    """
    labels = _check_labels(labels)
    classes = int(labels.max()) + 1 if labels.numel() else 1  # labels are small: one read per call
    pending = [probe_tensor(matrix, labels, classes, ridge=ridge) for matrix in features]
    tensors = [item for item in pending if isinstance(item, torch.Tensor)]
    host = iter(torch.stack([t.cpu() for t in tensors]).tolist() if tensors else [])
    return [probe_result(matrix.shape[0], item, next(host) if isinstance(item, torch.Tensor) else None)
            for matrix, item in zip(features, pending)]  # fmt: skip


def probe_tensor(
    features: torch.Tensor, labels: torch.Tensor, classes: int, *, ridge: float = RIDGE
) -> torch.Tensor | str:
    """Enqueue one probe on the features' device, without a host synchronisation.

    Args:
        features: ``(n, p)`` float tensor, one row per example.
        labels: ``(>= n,)`` integer class labels (cut to ``n``), any device.
        classes: The number of classes ``C`` (labels are below it).
        ridge: As for :func:`probe_accuracy`.

    Returns:
        ``[accuracy, finite]`` as a float64 tensor on the features' device (read it with
        :func:`probe_result`), or the status ``few_rows`` or ``failed`` when there is nothing to read.

    Raises:
        ValueError: As for :func:`probe_accuracy`.
    """
    if not ridge > 0:
        raise ValueError(f"ridge must be positive, got {ridge!r}")
    x, y = _rows(features, _check_labels(labels))
    if x.shape[0] < MIN_PROBE_ROWS:
        return "few_rows"
    try:
        return _device_probe(x, y, classes, ridge)
    except RuntimeError:
        return "failed"


def probe_result(rows: int, item: torch.Tensor | str, values: list[float] | None) -> ProbeResult:
    """The :class:`ProbeResult` of a :func:`probe_tensor` on ``rows`` rows, ``values`` its host copy."""
    fit, scored = (rows + 1) // 2, rows // 2
    if isinstance(item, str):
        return ProbeResult(math.nan, item, fit, scored)
    accuracy, finite = values  # type: ignore[misc]
    if finite < 1:
        return ProbeResult(math.nan, "nonfinite", fit, scored)
    return ProbeResult(float(accuracy), "ok", fit, scored)


def split(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fit rows and the scored rows of a probe on ``rows`` rows (fixed: seed 0, on the CPU)."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    return order[: (rows + 1) // 2], order[(rows + 1) // 2 :]


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")  # fmt: skip
    return labels


def _rows(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if labels.shape[0] < features.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows, features {features.shape[0]}")
    x = features.detach().reshape(features.shape[0], -1).double()
    return x, labels[: x.shape[0]].to(x.device).long()


def _device_probe(x: torch.Tensor, y: torch.Tensor, classes: int, ridge: float) -> torch.Tensor:
    """``[accuracy, finite]`` as a float64 tensor on ``x``'s device (no host sync)."""
    finite = torch.isfinite(x).all()
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
    fit, scored = (index.to(x.device) for index in split(x.shape[0]))
    predicted = _predict(x[fit], y[fit], x[scored], classes, ridge)
    accuracy = (predicted == y[scored]).double().mean()
    return torch.stack([accuracy, finite.double()])


def _predict(
    fit_x: torch.Tensor, fit_y: torch.Tensor, test_x: torch.Tensor, classes: int, ridge: float
) -> torch.Tensor:
    """Class predictions for ``test_x`` from the ridge fit on ``(fit_x, fit_y)``."""
    targets = torch.nn.functional.one_hot(fit_y.clamp_min(0), classes).double()
    mean_x, mean_y = fit_x.mean(dim=0), targets.mean(dim=0)
    x, t = fit_x - mean_x, targets - mean_y
    n, p = x.shape
    strength = (ridge * (x * x).sum() / p).clamp_min(torch.finfo(torch.float64).tiny)
    if n < p:  # dual: W = Xᵀ (XXᵀ + λI)⁻¹ T
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        weights = x.T @ torch.linalg.solve(x @ x.T + strength * eye, t)
    else:
        eye = torch.eye(p, dtype=x.dtype, device=x.device)
        weights = torch.linalg.solve(x.T @ x + strength * eye, x.T @ t)
    return ((test_x - mean_x) @ weights + mean_y).argmax(dim=1)
