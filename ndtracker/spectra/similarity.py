"""Linear CKA between layers, on the same examples of the same sample; pure torch.

The *row plan* shared by every layer: one row per example, the first ``rows`` examples of the
batch (:func:`example_matrix`): a dense output ``(B, F)`` as is, a sequence or other output
flattened per example to ``(B, T·D)``, a convolution's ``(B, C, *spatial)`` mean-pooled over
positions to ``(B, C)``. So row ``i`` of every layer is the same input, whatever the layer's shape.

Linear CKA (Kornblith et al. 2019) of two such matrices ``X (n x p)`` and ``Y (n x q)``, both
column-centred:

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) = ⟨K, L⟩ / (‖K‖_F ‖L‖_F),   K = XXᵀ, L = YYᵀ

(the row-side form: with centred columns ``K`` and ``L`` are already double-centred). Every
layer's Gram is formed once and all pairs come from one product of the stacked, flattened Grams,
so ``L`` layers cost ``L`` Grams of ``n x n`` and one ``L x L`` product. CKA is 1 for identical
layers and for an orthogonally rotated or isotropically scaled copy, near 0 for independent
features, and symmetric with a unit diagonal.

Statuses (the ``status`` of a pair, CKA NaN unless ``ok``): ``few_rows`` (fewer than
:data:`MIN_ROWS` rows: two points are always perfectly similar once centred), ``nonfinite``,
``zero`` (a layer constant over the rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MIN_ROWS", "DEFAULT_ROWS", "SimilarityMatrix", "example_matrix", "linear_cka", "cka_matrix"]

MIN_ROWS = 4
"""The fewest rows (examples) CKA is reported on; fewer give the status ``few_rows``."""

DEFAULT_ROWS = 512
"""Examples per sample compared by default (the Grams are ``rows x rows``)."""


def example_matrix(
    output: torch.Tensor, *, channels_first: bool = False, rows: int | None = DEFAULT_ROWS
) -> torch.Tensor:
    """Reshape a layer output to one float32 row per example: the first ``rows`` examples.

    Args:
        output: The output, batch first, shape ``(B, ...)``.
        channels_first: Whether dim 1 holds channels (a convolution): positions are mean-pooled.
        rows: Keep the first this many examples (None: all).

    Returns:
        A ``(min(B, rows), features)`` float32 tensor on the output's device (not centred).
    """
    x = output.detach()
    if x.dim() == 0:
        x = x.reshape(1, 1)
    x = x[:rows] if rows is not None else x
    if channels_first and x.dim() > 2:
        x = x.flatten(2).float().mean(dim=2)
    return x.reshape(x.shape[0], -1).float()


@dataclass(frozen=True)
class SimilarityMatrix:
    """CKA of every pair of layers in one sample.

    Attributes:
        cka: ``(L, L)`` float64 tensor on the host, symmetric, NaN where a pair is not ``ok``.
        status: Per layer ``ok``, ``few_rows``, ``nonfinite`` or ``zero``; a pair is ``ok`` when
            both its layers are, else it takes the first layer's problem that is not ``ok``.
        rows: The rows compared.
    """

    cka: torch.Tensor
    status: tuple[str, ...]
    rows: int

    def pair_status(self, a: int, b: int) -> str:
        """The status of the pair ``(a, b)``."""
        return next((s for s in (self.status[a], self.status[b]) if s != "ok"), "ok")


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """``XXᵀ`` of the column-centred ``x`` (float64); a constant column centres to exactly 0."""
    x = x.double()
    x = x - x[:1]
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two matrices with the same rows (feature-side formula, float64).

    Args:
        x: ``(n, p)``; y: ``(n, q)``, row ``i`` the same example in both.

    Returns:
        CKA in [0, 1]; NaN when either is constant over the rows or ``n < MIN_ROWS``.

    Raises:
        ValueError: The row counts differ.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same rows, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < MIN_ROWS:
        return float("nan")
    x = x.double() - x.double().mean(dim=0)
    y = y.double() - y.double().mean(dim=0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    scale = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / scale) if scale > 0 else float("nan")


def cka_matrix(matrices: list[torch.Tensor]) -> SimilarityMatrix:
    """Linear CKA of every pair of ``matrices`` (same examples in the same rows), row-side form.

    Rows beyond the shortest matrix are dropped, so every layer is compared on the same examples.
    Work happens on the matrices' device (all on one device); the ``L x L`` result comes back to
    the host with one transfer.

    Args:
        matrices: One ``(n_i, p_i)`` matrix per layer, e.g. from :func:`example_matrix`.

    Returns:
        The :class:`SimilarityMatrix`; CKA is NaN, with a status saying why, for a layer with
        fewer than :data:`MIN_ROWS` rows, a non-finite entry or no variation over the rows.
    """
    count = len(matrices)
    rows = min((m.shape[0] for m in matrices), default=0)
    if count == 0 or rows < MIN_ROWS:
        nan = torch.full((count, count), float("nan"), dtype=torch.float64)
        return SimilarityMatrix(nan, ("few_rows",) * count, rows)
    with torch.no_grad():
        grams = torch.stack([_centred_gram(m[:rows]).reshape(-1) for m in matrices])
        finite = torch.isfinite(grams).all(dim=1)
        grams = torch.where(finite[:, None], grams, torch.zeros_like(grams))
        inner = (grams @ grams.T).cpu()
        finite = finite.cpu()
    norms = inner.diagonal().clamp_min(0).sqrt()
    status = tuple(_status(bool(f), float(n)) for f, n in zip(finite, norms))
    cka = inner / (norms[:, None] * norms[None, :])
    ok = torch.tensor([s == "ok" for s in status])
    cka = torch.where(ok[:, None] & ok[None, :], cka.clamp(0.0, 1.0), torch.nan)
    cka.diagonal().copy_(torch.where(ok, 1.0, torch.nan))
    return SimilarityMatrix(cka, status, rows)


def _status(finite: bool, norm: float) -> str:
    if not finite:
        return "nonfinite"
    return "ok" if norm > 0 else "zero"
