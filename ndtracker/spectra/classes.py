"""Class-conditional geometry of a layer's examples: neural collapse and class manifolds.

Rows are examples ``h_i`` (features of one input each) with integer class labels ``y_i``. Classes
with fewer than two rows are *skipped* (their rows leave every statistic) and counted; the ``C``
classes left, ``n`` rows in all, give (``μ_c`` the mean of class ``c``, ``n_c`` its row count,
``μ`` the mean of all ``n`` rows, ``r_i = h_i − μ_{y_i}``):

=====================  ==========================================================================
statistic              definition
=====================  ==========================================================================
``nc1``                tr(Σ_W Σ_B⁺) / C, with Σ_W = (1/n) Σ_i r_i r_iᵀ, Σ_B = (1/C) Σ_c (μ_c − μ)
                       (μ_c − μ)ᵀ and Σ_B⁺ its pseudo-inverse without the eigenvalues below 1e-6
                       times the largest (Papyan, Han & Donoho 2020)
``radius``             mean over classes of sqrt((1/n_c) Σ_{i∈c} ‖r_i‖²) / ‖μ_c − μ‖: the class's
                       spread relative to the norm of its centre (Chung, Lee & Sompolinsky 2018;
                       Cohen et al. 2020)
``dimension``          mean over classes of the participation ratio (tr Σ_c)² / tr(Σ_c²) of the
                       class covariance Σ_c = (1/n_c) Σ_{i∈c} r_i r_iᵀ
``center_alignment``   mean over pairs c < d of |cos(μ_c − μ, μ_d − μ)|
``axes_alignment``     mean over pairs c < d of |cos(a_c, a_d)|, a_c the top eigenvector of Σ_c
                       (its principal axis: exact on the CPU; on an accelerator 64 power
                       iterations from a fixed random start, all classes at once and with no
                       synchronisation, so the error shrinks as (λ₂/λ₁)^64)
``ncc_accuracy``       fraction of the n rows whose nearest class mean (Euclidean) is their own
=====================  ==========================================================================

Every statistic is invariant to a common rotation, scale and translation of the features.
Everything but two C x C eigenproblems runs on the features' device:
:func:`geometry_tensor` enqueues one flat vector per matrix without synchronising, the caller
moves all the vectors of a sample to the host at once, and :func:`finish` names the values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "STATISTICS", "ClassPlan", "ClassGeometry", "plan_classes", "geometry_tensor", "finish",
    "class_geometry", "measure_classes", "example_matrix", "to_host",
]  # fmt: skip

STATISTICS: tuple[str, ...] = (
    "nc1", "radius", "dimension", "center_alignment", "axes_alignment", "ncc_accuracy",
)  # fmt: skip
"""The statistics of a :class:`ClassGeometry`, in column order."""

CUTOFF = 1e-6  # eigenvalues of Σ_B below this times the largest are left out of its pseudo-inverse
POWER_ITERATIONS = 64
_HEAD = 5  # radius, dimension, centre alignment, axes alignment, NCC accuracy (after the flag)


@dataclass(frozen=True)
class ClassPlan:
    """Which rows of a sample enter the class statistics, sorted by class (decided on the host).

    Attributes:
        rows: Total rows the labels cover.
        order: Indices of the kept rows, grouped by class (classes in increasing label order).
        counts: Rows per kept class.
        skipped: Classes with fewer than two rows, left out.
    """

    rows: int
    order: np.ndarray
    counts: np.ndarray
    skipped: int

    @property
    def classes(self) -> int:
        """The number of classes measured."""
        return len(self.counts)


@dataclass(frozen=True)
class ClassGeometry:
    """The class statistics of one matrix (see the module table), and why they may be NaN.

    Attributes:
        classes: Classes measured (two rows or more).
        skipped_classes: Classes left out for having fewer than two rows.
        nc1, radius, dimension, center_alignment, axes_alignment, ncc_accuracy: The statistics.
        status: ``ok``; ``few_classes`` (fewer than two classes measured: all NaN);
            ``nonfinite`` (NaN or Inf features: all NaN); ``zero`` (the class means coincide:
            ``nc1`` and the centre statistics are NaN).
    """

    classes: int
    skipped_classes: int
    nc1: float
    radius: float
    dimension: float
    center_alignment: float
    axes_alignment: float
    ncc_accuracy: float
    status: str

    def as_row(self) -> dict[str, float | int | str]:
        """The record as a ``classes`` table row (without step, layer and run columns)."""
        return {name: getattr(self, name) for name in ("classes", "skipped_classes", *STATISTICS, "status")}


def example_matrix(
    output: torch.Tensor, *, channels_first: bool = False, index: torch.Tensor | None = None
) -> torch.Tensor:
    """A layer output as a float32 ``(examples, features)`` matrix: one row per input example.

    ``(B,)`` gives ``(B, 1)``; ``(B, F)`` stays; a sequence ``(B, T, D)`` (any number of middle
    dims) is averaged over its tokens to ``(B, D)``; with ``channels_first`` a convolution output
    ``(B, C, *spatial)`` is averaged over its positions to ``(B, C)``.

    Args:
        output: The layer output, batch first.
        channels_first: Whether dim 1 holds channels.
        index: Rows (examples) to keep, on the output's device; None keeps all.
    """
    x = output.detach()
    if index is not None:
        x = x.index_select(0, index)
    if x.dim() <= 1:
        return x.reshape(-1, 1).float()
    if x.dim() > 2:
        x = x.float().flatten(2).mean(2) if channels_first else x.float().flatten(1, -2).mean(1)
    return x.float()


def plan_classes(labels: np.ndarray | Sequence[int]) -> ClassPlan:
    """Group the rows by class and drop the classes with fewer than two rows.

    Args:
        labels: Integer class labels, one per row (1-D).

    Raises:
        ValueError: If the labels are not a 1-D sequence of integers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"labels must be 1-D integer class indices, got shape {labels.shape} "
                         f"and dtype {labels.dtype}")  # fmt: skip
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    kept = counts >= 2
    order = np.argsort(inverse, kind="stable")
    order = order[kept[inverse[order]]]
    return ClassPlan(len(labels), order, counts[kept], int((~kept).sum()))


def geometry_tensor(features: torch.Tensor, plan: ClassPlan) -> torch.Tensor:
    """Enqueue the class statistics of ``features`` on its device; no host synchronisation.

    Args:
        features: ``(plan.rows, F)`` float matrix, one row per example.
        plan: From :func:`plan_classes` on the rows' labels.

    Returns:
        A 1-D tensor on the features' device: finite flag, mean radius, mean dimension, centre
        alignment, axes alignment, NCC accuracy, then the two C x C matrices G = BBᵀ/C and
        S = B RᵀR Bᵀ (B the centred class means) that :func:`finish` turns into NC1. Length 1
        when fewer than two classes are measured.
    """
    if features.dim() != 2 or features.shape[0] != plan.rows:
        raise ValueError(f"features must be a ({plan.rows}, F) matrix, got {tuple(features.shape)}")
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    finite = torch.isfinite(features).all().to(dtype).reshape(1)
    if plan.classes < 2:
        return finite
    device = features.device
    order = torch.as_tensor(plan.order, device=device)
    counts = torch.as_tensor(plan.counts, dtype=dtype, device=device)
    segment = torch.repeat_interleave(torch.arange(plan.classes, device=device), counts.long())
    x = features.index_select(0, order).to(dtype)
    x = torch.nan_to_num(x - x.mean(0), nan=0.0, posinf=0.0, neginf=0.0)  # μ = 0 from here on
    members = torch.nn.functional.one_hot(segment, plan.classes).T.to(dtype)  # (C, n): sums by BLAS
    means = members @ x / counts[:, None]
    residuals = x - means[segment]
    spread = members @ residuals.square().sum(1)
    between = means @ means.T / plan.classes
    projected = residuals @ means.T
    squares, axes = _per_class(residuals, plan.counts, exact=x.device.type == "cpu")
    if axes is None:
        axes = _principal_axes(residuals, segment, members)
    head = torch.stack([
        _radius(spread, counts, means), (spread.square() / squares).mean(),
        _mean_pair_cosine(means), _mean_pair_cosine(axes), _ncc_accuracy(x, means, segment),
    ])  # fmt: skip
    return torch.cat([finite, head, between.flatten(), (projected.T @ projected).flatten()])


def _radius(spread: torch.Tensor, counts: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return ((spread / counts).sqrt() / means.norm(dim=1)).mean()


def _per_class(
    residuals: torch.Tensor, counts: np.ndarray, exact: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per class, ‖R_cᵀR_c‖_F² (for the participation ratio) and, when ``exact``, the top axis.

    Each class's Gram is formed on its smaller side. ``exact`` (on the host, where an
    eigendecomposition costs no synchronisation) takes each axis from that Gram's eigenvectors;
    otherwise the axes come from :func:`_principal_axes`.
    """
    squares, axes, start = [], [], 0
    for count in counts.tolist():
        block = residuals[start : start + count]
        by_rows = count <= block.shape[1]
        gram = block @ block.T if by_rows else block.T @ block
        squares.append(gram.square().sum())
        if exact:
            top = torch.linalg.eigh(gram)[1][:, -1]
            axes.append(block.T @ top if by_rows else top)
        start += count
    if not exact:
        return torch.stack(squares), None
    stacked = torch.stack(axes)
    norms = stacked.norm(dim=1, keepdim=True).clamp_min(torch.finfo(stacked.dtype).tiny)
    return torch.stack(squares), stacked / norms


def _principal_axes(residuals: torch.Tensor, segment: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Each class's top covariance eigenvector (unit rows), by power iteration on all classes at once."""
    generator = torch.Generator(device=residuals.device).manual_seed(0)
    axes = torch.randn(members.shape[0], residuals.shape[1], generator=generator, device=residuals.device,
                       dtype=residuals.dtype)  # fmt: skip
    for _ in range(POWER_ITERATIONS):
        weights = (residuals * axes[segment]).sum(1, keepdim=True)
        axes = members @ (residuals * weights)
        axes = axes / axes.norm(dim=1, keepdim=True).clamp_min(torch.finfo(axes.dtype).tiny)
    return axes


def _mean_pair_cosine(vectors: torch.Tensor) -> torch.Tensor:
    """Mean |cos| over the distinct pairs of rows (a zero row has cosine 0 with every other)."""
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    cosines = (unit @ unit.T).abs()
    count = vectors.shape[0]
    return (cosines.sum() - cosines.diagonal().sum()) / (count * (count - 1))


def _ncc_accuracy(x: torch.Tensor, means: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(x, means)
    return (distances.argmin(1) == segment).to(x.dtype).mean()


def finish(values: np.ndarray, plan: ClassPlan) -> ClassGeometry:
    """Name the host copy of a :func:`geometry_tensor` vector; solve NC1's C x C eigenproblem."""
    classes, skipped = plan.classes, plan.skipped
    if classes < 2:
        return _nan(classes, skipped, "few_classes")
    if not values[0] >= 1:
        return _nan(classes, skipped, "nonfinite")
    head = [float(v) for v in values[1 : 1 + _HEAD]]
    square = classes * classes
    between = values[1 + _HEAD :][:square].reshape(classes, classes)
    within = values[1 + _HEAD + square :].reshape(classes, classes)
    eigenvalues, vectors = np.linalg.eigh(between)
    top = eigenvalues[-1]
    if not top > 0:
        radius, dimension, _, axes, ncc = head
        return ClassGeometry(classes, skipped, math.nan, math.nan, dimension, math.nan, axes, ncc, "zero")
    keep = eigenvalues > CUTOFF * top
    quadratic = np.einsum("ik,ij,jk->k", vectors[:, keep], within, vectors[:, keep])
    trace = float(np.sum(quadratic / eigenvalues[keep] ** 2)) / (len(plan.order) * classes)
    return ClassGeometry(classes, skipped, trace / classes, *head, "ok")


def _nan(classes: int, skipped: int, status: str) -> ClassGeometry:
    return ClassGeometry(classes, skipped, *(math.nan,) * len(STATISTICS), status)


def measure_classes(matrices: Sequence[torch.Tensor], plans: Sequence[ClassPlan]) -> list[ClassGeometry]:
    """Class statistics of several matrices with one host transfer per device.

    Args:
        matrices: ``(rows, F)`` matrices, one row per example.
        plans: Each matrix's :class:`ClassPlan`.
    """
    vectors = [geometry_tensor(matrix, plan) for matrix, plan in zip(matrices, plans)]
    return [finish(values, plan) for values, plan in zip(to_host(vectors), plans)]


def to_host(vectors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Move 1-D tensors to the host as float64 arrays: one transfer per device."""
    host: list[np.ndarray | None] = [None] * len(vectors)
    by_device: dict[torch.device, list[int]] = {}
    for index, vector in enumerate(vectors):
        by_device.setdefault(vector.device, []).append(index)
    for indices in by_device.values():
        flat = torch.cat([vectors[i].double() for i in indices]).cpu().numpy()
        for i, part in zip(indices, np.split(flat, np.cumsum([vectors[i].numel() for i in indices])[:-1])):
            host[i] = part
    return host  # type: ignore[return-value]


def class_geometry(
    features: torch.Tensor, labels: torch.Tensor | np.ndarray | Sequence[int]
) -> ClassGeometry:
    """Class statistics of one matrix: a convenience over :func:`measure_classes`.

    Example:
        >>> import torch
        >>> features = torch.tensor([[0., 0.], [0., .1], [10., 0.], [10., .1]])
        >>> geometry = class_geometry(features, [0, 0, 1, 1])
        >>> geometry.ncc_accuracy, geometry.nc1 < 1e-3, geometry.status
        (1.0, True, 'ok')
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    with torch.no_grad():
        return measure_classes([features], [plan_classes(labels)])[0]
