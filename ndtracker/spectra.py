"""Matrices to spectra to metrics: pure torch, on the tensor's own device.

Definitions (singular values σ₁ ≥ σ₂ ≥ … of the matrix, λᵢ = σᵢ²):

=======================  ==========================================  =================================
metric                   formula                                     note
=======================  ==========================================  =================================
``stable_rank``          Σλ / λ₁ = ‖X‖_F² / ‖X‖₂²                    needs λ₁ and the total only
``participation_ratio``  (Σλ)² / Σλ² = ‖X‖_F⁴ / ‖XᵀX‖_F²            on eigenvalues, not on σ
``effective_rank``       exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σσ             Roy & Vetterli 2007
``energy90``             min k with Σ_{i≤k} λᵢ ≥ 0.9 Σλ              an integer
=======================  ==========================================  =================================

Two estimators, both built on the Gram matrix of the smaller side (``XXᵀ`` or ``XᵀX``), which has the
same non-zero eigenvalues λ as the matrix and is one fast matrix product away:

* ``exact``: all eigenvalues of the Gram (``eigvalsh``), every metric from them. The Gram is formed in
  float64 on CPU and CUDA (float32 elsewhere), because effective rank of rank-deficient matrices is
  off by up to 5% when float32 round-off lifts their zero eigenvalues.
* ``randomized`` (streaming): the two moments Σλ = tr G and Σλ² = ‖G‖_F² come exactly from the Gram
  (float32 is plenty for sums of squares), and λ₁ from a block Krylov iteration warm-started with the
  top directions of the previous sample (:class:`StreamingSpectrum`). No eigendecomposition of the
  Gram, so it gives ``stable_rank`` and ``participation_ratio`` only. When neither needs Σλ², no
  Gram is formed at all: the Krylov iteration applies ``X`` and ``Xᵀ`` directly.

Every estimate returns, besides the metrics, a bound on the relative error of λ₁ (the Ritz residual)
so a caller can re-anchor a stream on the exact estimator without a host sync now: the check uses the
previous sample's figures, which are on the host anyway.

Inputs are scaled by their largest magnitude before any product (all four metrics are scale
invariant), so activations of 1e30 do not overflow, and non-finite entries are zeroed and flagged
rather than passed to LAPACK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

Metric = Literal["stable_rank", "participation_ratio", "effective_rank", "energy90"]
Estimator = Literal["exact", "randomized"]
ConvLayout = Literal["channel", "sample"]

METRICS: tuple[str, ...] = ("stable_rank", "participation_ratio", "effective_rank", "energy90")
FULL_SPECTRUM: frozenset[str] = frozenset({"effective_rank", "energy90"})
ESTIMATORS: tuple[str, ...] = ("exact", "randomized")

# Layout of the vector `measure` returns: the metrics in METRICS order, then these.
RESULT_FIELDS: tuple[str, ...] = METRICS + ("lambda_error", "finite", "energy")

KRYLOV_BLOCK = 8  # vectors per Krylov block (the warm-start basis keeps this many directions)
COLD_DEPTH = 8  # block steps when there is no previous basis
MAX_DEPTH = 16  # block steps at most; a stream that still misses TOLERANCE falls back to exact
TOLERANCE = 5e-4  # target relative error of λ₁, so stable_rank is within it (the core asks 1e-3)
SMALL_SIDE = 96  # Grams this small are cheaper to eigendecompose than to iterate on


# --------------------------------------------------------------------------------------------------
# Shaping: layer outputs and weights to 2-D float32 matrices.


def activation_matrix(
    output: torch.Tensor,
    *,
    channels_first: bool = False,
    conv: ConvLayout = "channel",
    max_rows: int | None = 4096,
    center: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reshape a layer output to a float32 ``rows x features`` matrix.

    Args:
        output: The layer output, batch first: ``(B,)``, ``(B, F)``, ``(B, T, D)`` (tokens), or,
            with ``channels_first``, ``(B, C, *spatial)`` from a convolution.
        channels_first: Whether dim 1 holds channels (convolutions, batch norms).
        conv: For channels-first outputs, ``"channel"`` gives ``(B·H·W, C)`` (each position a row)
            and ``"sample"`` gives ``(B, C·H·W)`` (what the peer does; caps every metric at B).
        max_rows: Rows above this many are subsampled uniformly (without replacement, with
            ``generator``); ``None`` keeps all rows.
        center: Subtract each column's mean.
        generator: Random generator on ``output.device`` for the row subsample.

    Returns:
        A 2-D float32 tensor on ``output.device``.
    """
    x = output.detach()
    if x.dim() == 0:
        x = x.reshape(1, 1)
    elif x.dim() == 1:
        x = x.reshape(-1, 1)
    elif channels_first and x.dim() > 2:
        x = x.flatten(2).transpose(1, 2).flatten(0, 1) if conv == "channel" else x.flatten(1)
    else:
        x = x.flatten(0, -2)
    x = subsample_rows(x, max_rows, generator)
    x = x.float()
    return x - x.mean(dim=0, keepdim=True) if center and x.shape[0] > 0 else x


def subsample_rows(
    x: torch.Tensor, max_rows: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Keep ``max_rows`` rows of ``x`` drawn uniformly without replacement (all if fewer)."""
    if max_rows is None or x.shape[0] <= max_rows:
        return x
    index = torch.randperm(x.shape[0], generator=generator, device=x.device)[:max_rows]
    return x.index_select(0, index)


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Reshape a weight to float32 ``(out, in·k·k)``; a 1-D weight becomes one row. Not centred."""
    w = weight.detach()
    return w.reshape(1, -1).float() if w.dim() <= 1 else w.reshape(w.shape[0], -1).float()


# --------------------------------------------------------------------------------------------------
# Metrics from a spectrum.


def metrics_from_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Compute all four metrics from the eigenvalues λ = σ² of a Gram matrix.

    Args:
        eigenvalues: 1-D tensor of λ, any order; tiny negatives from round-off are clamped to 0.

    Returns:
        A float64 tensor ``[stable_rank, participation_ratio, effective_rank, energy90]`` on the
        same device. A zero spectrum gives NaN for all four.
    """
    lam = eigenvalues.double().clamp_min(0).sort(descending=True).values
    lam = torch.where(lam > lam[:1] * _rank_tolerance(eigenvalues), lam, torch.zeros_like(lam))
    total = lam.sum()
    stable = total / lam[0]
    participation = total**2 / (lam * lam).sum()
    sigma = lam.sqrt()
    p = sigma / sigma.sum()
    entropy = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum()
    energy90 = (torch.cumsum(lam, 0) < 0.9 * total).sum() + 1
    nan = torch.full_like(total, math.nan)
    energy90 = torch.where(total > 0, energy90.double(), nan)
    return torch.stack([stable, participation, torch.exp(entropy), energy90])


def _rank_tolerance(eigenvalues: torch.Tensor) -> float:
    """Relative size under which an eigenvalue of a Gram in this dtype is round-off, not signal."""
    return eigenvalues.shape[0] * torch.finfo(eigenvalues.dtype).eps


def exact_spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """Return all eigenvalues λ = σ² of ``matrix`` (descending) via the Gram of its smaller side."""
    x = matrix.to(_full_spectrum_dtype(matrix.device))
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return torch.linalg.eigvalsh(gram).flip(0)


def _full_spectrum_dtype(device: torch.device) -> torch.dtype:
    """Float64 where the device has it (CPU, CUDA), float32 elsewhere (MPS has no float64)."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def choose_estimator(
    shape: tuple[int, int], metrics: frozenset[str] | set[str], requested: str = "auto"
) -> Estimator:
    """Pick the estimator for a matrix of this shape (``requested="auto"``) or check a request.

    ``auto`` takes ``exact`` when a full-spectrum metric is wanted or the smaller side is at most
    :data:`SMALL_SIDE` (an eigendecomposition that small costs less than the iteration), and
    ``randomized`` otherwise. An explicit ``randomized`` on a tiny matrix is honoured.
    """
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if FULL_SPECTRUM & set(metrics) or min(shape) <= SMALL_SIDE:
        return "exact"
    return "randomized"


@dataclass
class Job:
    """One matrix to measure in a batch (see :func:`measure_many`)."""

    matrix: torch.Tensor
    estimator: Estimator
    metrics: frozenset[str]
    state: StreamingSpectrum | None = None


def measure_many(jobs: list[Job]) -> tuple[list[list[float]], list[str]]:
    """Measure a batch of matrices with one host transfer (two if a stream missed its tolerance).

    Randomized results whose λ₁ error bound exceeds :data:`TOLERANCE` are measured again with the
    exact estimator (a second transfer, for those rows only), and their streams deepen their
    Krylov space for the next sample. So every figure returned is within the tolerance.

    Returns:
        The rows laid out as :data:`RESULT_FIELDS` (Python floats), and the estimator each row used.
    """
    if not jobs:
        return [], []
    rows = torch.stack([measure(j.matrix, estimator=j.estimator, metrics=j.metrics, state=j.state) for j in jobs])
    table = rows.cpu().tolist()
    used = [j.estimator for j in jobs]
    redo = [i for i, j in enumerate(jobs) if j.estimator == "randomized" and not table[i][4] <= TOLERANCE]
    for i, job in enumerate(jobs):
        if job.state is not None and job.estimator == "randomized":
            job.state.adapt(table[i][4])
    if redo:
        exact = torch.stack([measure(jobs[i].matrix, estimator="exact", metrics=jobs[i].metrics) for i in redo])
        for i, row in zip(redo, exact.cpu().tolist()):
            table[i], used[i] = row, "exact"
            jobs[i].state.fallbacks += 1  # type: ignore[union-attr]
    return table, used


# --------------------------------------------------------------------------------------------------
# The streaming (randomized) estimator.


@dataclass
class StreamingSpectrum:
    """Warm-start state of one (layer, space) stream: its top right-singular directions.

    Attributes:
        basis: ``(features, k)`` orthonormal columns from the previous sample, or ``None``.
        samples: How many samples this stream has measured.
        depth: Krylov block steps for the next warm sample (see :meth:`adapt`).
        fallbacks: How many samples missed the tolerance and were redone exactly.
    """

    basis: torch.Tensor | None = field(default=None, repr=False)
    samples: int = 0
    depth: int = 2
    fallbacks: int = 0

    def reset(self) -> None:
        """Forget the basis, so the next sample starts cold."""
        self.basis = None

    def adapt(self, error: float) -> None:
        """Tune the Krylov depth from the last sample's λ₁ error bound (a host float).

        Deeper when the bound missed :data:`TOLERANCE`, shallower when it was ten times better, so
        a stream settles at the cheapest depth that is accurate for its spectrum.
        """
        if error > TOLERANCE:
            self.depth = min(2 * self.depth, MAX_DEPTH)
        elif error < TOLERANCE / 10:
            self.depth = max(self.depth - 1, 1)


def measure(
    matrix: torch.Tensor,
    *,
    estimator: Estimator,
    metrics: frozenset[str] | set[str] = frozenset(METRICS),
    state: StreamingSpectrum | None = None,
) -> torch.Tensor:
    """Measure one matrix: metrics, λ₁ error bound, finiteness flag and total energy.

    Nothing here synchronises with the host; the caller stacks the results of all layers and moves
    them in one transfer.

    Args:
        matrix: 2-D float tensor ``(rows, features)``.
        estimator: ``"exact"`` or ``"randomized"`` (the latter for ``stable_rank`` and
            ``participation_ratio`` only).
        metrics: The metrics wanted; the others come back NaN.
        state: The stream's warm-start state (``randomized`` only); updated in place.

    Returns:
        A float64 tensor laid out as :data:`RESULT_FIELDS`: the four metrics, the relative error
        bound of λ₁ (0 for exact), 1.0 if every entry was finite else 0.0, and Σλ of the scaled
        matrix (0 for an all-zero matrix).

    Raises:
        ValueError: On an unknown estimator or a full-spectrum metric with ``"randomized"``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "randomized" and FULL_SPECTRUM & set(metrics):
        raise ValueError(
            f"estimator='randomized' gives stable_rank and participation_ratio only, got metrics "
            f"{sorted(metrics)}; use estimator='exact' for effective_rank and energy90"
        )
    x, finite = _clean(matrix)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return _result(torch.full((4,), math.nan, device=x.device), 0.0, finite, x.new_zeros(()))
    if estimator == "exact":
        values = metrics_from_eigenvalues(exact_spectrum(x))
        return _result(_mask(values, metrics), 0.0, finite, (x.double() ** 2).sum())
    return _randomized(x, metrics, state if state is not None else StreamingSpectrum(), finite)


def _clean(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero non-finite entries, scale to max magnitude 1; return the matrix and a finite flag."""
    x = matrix.float()
    finite = torch.isfinite(x).all()
    x = torch.where(torch.isfinite(x), x, torch.zeros((), device=x.device))
    if x.numel() == 0:
        return x, finite
    scale = x.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    return x / scale, finite


def _mask(values: torch.Tensor, metrics: frozenset[str] | set[str]) -> torch.Tensor:
    """Set the metrics not asked for to NaN."""
    keep = torch.tensor([m in metrics for m in METRICS], device=values.device)
    return torch.where(keep, values, torch.full_like(values, math.nan))


def _result(
    values: torch.Tensor, error: torch.Tensor | float, finite: torch.Tensor, energy: torch.Tensor
) -> torch.Tensor:
    """Pack metrics and diagnostics into one float64 vector (see RESULT_FIELDS)."""
    values = values.double()
    extra = torch.stack(
        [
            torch.as_tensor(error, dtype=torch.float64, device=values.device),
            finite.to(torch.float64),
            energy.to(torch.float64),
        ]
    )
    return torch.cat([values, extra])


def _randomized(
    x: torch.Tensor, metrics: frozenset[str] | set[str], state: StreamingSpectrum, finite
) -> torch.Tensor:
    """Moments from the Gram (when Σλ² is needed), λ₁ from a warm-started block Krylov space."""
    cols = x.shape[1]
    if state.basis is not None and state.basis.shape[0] != cols:
        state.reset()
    depth = state.depth if state.basis is not None else COLD_DEPTH
    if "participation_ratio" not in metrics:
        total = (x * x).sum(dtype=torch.float64)
        theta, error, top = _krylov_top(lambda v: x.T @ (x @ v), _start(state, x), depth)
        state.basis = top
        squares = torch.full_like(total, math.nan)
    else:
        row_side = x.shape[0] < cols
        gram = x @ x.T if row_side else x.T @ x
        total = torch.diagonal(gram).sum(dtype=torch.float64)
        squares = (gram.double() ** 2).sum()
        start = x @ _start(state, x) if row_side else _start(state, x)
        theta, error, top = _krylov_top(lambda v: gram @ v, start, depth)
        state.basis = _orthonormal(x.T @ top) if row_side else top
    state.samples += 1
    values = torch.stack([total / theta, total**2 / squares, total * math.nan, total * math.nan])
    return _result(_mask(values, metrics), error, finite, total)


def _start(state: StreamingSpectrum, x: torch.Tensor) -> torch.Tensor:
    """The previous basis, or a seeded Gaussian block for a cold start."""
    if state.basis is not None:
        return state.basis
    generator = torch.Generator(device=x.device).manual_seed(state.samples)
    return torch.randn(x.shape[1], KRYLOV_BLOCK, generator=generator, device=x.device, dtype=x.dtype)


def _orthonormal(block: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of a block's columns (reduced QR)."""
    return torch.linalg.qr(block).Q


def _krylov_top(apply, start: torch.Tensor, depth: int):
    """Top eigenpairs of a symmetric PSD operator by Rayleigh–Ritz on a block Krylov space.

    Args:
        apply: ``v -> A @ v`` for ``(n, b)`` blocks.
        start: ``(n, b)`` starting block (a warm basis or random).
        depth: Number of block steps; the space has ``b · (depth + 1)`` directions.

    Returns:
        ``(θ₁, relative error estimate of θ₁, top-b Ritz vectors)``; θ₁ ≤ λ₁ always. The
        estimate is ``min(‖r‖, ‖r‖²/(θ₁ − θ₂)) / θ₁`` for the Ritz residual ``r``: the first term
        is a rigorous bound, the second the sharper one that holds once the Krylov space resolves
        the gap to λ₂ (Saad, *Numerical Methods for Large Eigenvalue Problems*, ch. 4).
    """
    block = _orthonormal(start)
    blocks = [block]
    for _ in range(depth):
        basis = torch.cat(blocks, 1)
        nxt = apply(block)
        nxt = nxt - basis @ (basis.T @ nxt)
        block = _orthonormal(nxt - basis @ (basis.T @ nxt))
        blocks.append(block)
    basis = _orthonormal(torch.cat(blocks, 1))
    image = apply(basis)
    theta, vectors = torch.linalg.eigh(basis.T @ image)
    top_vector = basis @ vectors[:, -1:]
    residual = torch.linalg.vector_norm(image @ vectors[:, -1:] - theta[-1] * top_vector).double()
    theta_top = theta[-1].double()
    gap = (theta_top - theta[-2].double()).clamp_min(torch.finfo(torch.float64).tiny)
    bound = torch.minimum(residual, residual**2 / gap)  # |λ₁ − θ₁| ≤ ‖r‖, and ≲ ‖r‖²/gap
    error = bound / theta_top.clamp_min(torch.finfo(torch.float64).tiny)
    return theta_top, error, basis @ vectors[:, -start.shape[1] :]
