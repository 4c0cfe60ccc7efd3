"""Metrics from a spectrum, and the exact estimator: eigenvalues of the Gram of the smaller side.

The Gram matrix of the smaller side (``XXᵀ`` or ``XᵀX``) has the same non-zero eigenvalues
λ = σ² as the matrix and is one fast matrix product away (formed from its upper blocks only
when large enough for that to pay off). With ``effective_rank`` or
``energy90`` asked for, every eigenvalue of the Gram formed in float64 on CPU and CUDA (float32
elsewhere), because effective rank of rank-deficient matrices is off by up to 5% when float32
round-off lifts their zero eigenvalues. With the two moment metrics only, the Gram is formed in
float32 and only its top eigenvalue is read.

No pass over the matrix is spent on scaling or cleaning: a float64 Gram of float32 entries can
neither overflow nor underflow, and a non-finite entry shows in the Gram's trace (every entry is in
one diagonal sum of squares), so the finite flag costs nothing; non-finite entries are zeroed in the
Gram so LAPACK never sees them. A float32 route whose total is not finite or may have underflowed
reports a NaN error estimate, and is redone in float64.
"""

from __future__ import annotations

import functools
import math

import torch

from ndtracker.vocabulary import FULL_SPECTRUM, METRICS

# Layout of the vector a measurement computes on the device: the metrics in METRICS order, then
# these; :class:`ndtracker.spectra.Result` names them once the vector is on the host.
ROW_FIELDS: tuple[str, ...] = METRICS + ("lambda_error", "finite", "energy")

UNDERFLOW = 1e-30  # a float32 Σλ below this (but not 0) may hide underflowed products: redo exactly
GRAM_BLOCK_ROWS = 128  # rows per block of a Gram formed from its upper blocks
GRAM_BLOCKS = 4  # blocks at least (and at most) for the upper-block product: from 512 rows
# CUDA compute capabilities with half-rate float64 (P100, V100, A100, H100/H200, B100/B200); the
# others run it at 1/32-1/64 of float32 (CUDA C Programming Guide, arithmetic instruction table)
FAST_FLOAT64_CUDA = frozenset({(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)})
HOST_SIDE = 128  # exact Grams up to this size are decomposed on the host, after the one transfer

TINY = torch.finfo(torch.float32).tiny


def metrics_from_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Compute all four metrics from the eigenvalues λ = σ² of a Gram matrix.

    Args:
        eigenvalues: 1-D tensor of λ, any order; tiny negatives from round-off are clamped to 0.

    Returns:
        A float64 tensor (float32 on devices without float64) ``[stable_rank,
        participation_ratio, effective_rank, energy90]`` on the same device. A zero spectrum gives
        NaN for all four.
    """
    lam = eigenvalues.to(full_spectrum_dtype(eigenvalues.device))
    lam = lam.clamp_min(0).sort(descending=True).values
    lam = lam * (lam > lam[0] * _rank_tolerance(eigenvalues))  # round-off is not signal
    total = lam.sum()
    sigma = lam.sqrt()
    p = sigma / sigma.sum()
    entropy = -torch.special.xlogy(p, p).sum()  # 0 log 0 = 0
    energy90 = ((torch.cumsum(lam, 0) < 0.9 * total).sum() + 1) * (total / total)  # NaN if zero
    participation = total.square() / lam.square().sum()
    return torch.stack([total / lam[0], participation, entropy.exp(), energy90])


def _rank_tolerance(eigenvalues: torch.Tensor) -> float:
    """Relative size under which an eigenvalue of a Gram in this dtype is round-off, not signal."""
    return eigenvalues.shape[0] * torch.finfo(eigenvalues.dtype).eps


def exact_spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """Return all eigenvalues λ = σ² of ``matrix`` (descending) via the Gram of its smaller side."""
    gram, _ = gram_matrix(matrix.to(full_spectrum_dtype(matrix.device)))
    return torch.linalg.eigvalsh(gram).flip(0)


def gram_matrix(matrix: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Form the Gram matrix of the smaller side, ``XXᵀ`` or ``XᵀX``, in the matrix's dtype.

    Args:
        matrix: 2-D tensor ``(rows, cols)``.
        out: Optional ``(n, n)`` tensor to write the Gram into (a slot of a batch).

    Returns:
        The symmetric ``(n, n)`` Gram, ``n = min(rows, cols)``, and whether it is the row side
        (``XXᵀ``).
    """
    row_side = matrix.shape[0] <= matrix.shape[1]
    return symmetric_product(matrix if row_side else matrix.T, out), row_side


def symmetric_product(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``a @ a.T`` (into ``out`` if given), computing only its upper blocks for long ``a``.

    A plain ``a @ a.T`` computes both triangles; with ``k`` row blocks only ``k(k+1)/2`` of the
    ``k²`` block products are needed. Measured on the 2-vCPU benchmark machine (2026-12-01): 15-25%
    less time at 1024 x 784, 1024 x 4096, 2048 x 512 and 512 x 4096, a tie at 512 x 784, but 15-25%
    *more* at 256 x 512 and 640 x 300 (small block products run below the BLAS peak), so blocks
    need :data:`GRAM_BLOCKS` of them and 512 columns.
    """
    blocks = min(a.shape[0] // GRAM_BLOCK_ROWS, GRAM_BLOCKS)
    if blocks < GRAM_BLOCKS or a.shape[1] < 512:
        return torch.mm(a, a.T, out=out)
    out = a.new_empty(a.shape[0], a.shape[0]) if out is None else out
    parts = a.chunk(blocks)
    starts = [0]
    for part in parts:
        starts.append(starts[-1] + part.shape[0])
    spans = [slice(starts[i], starts[i + 1]) for i in range(len(parts))]
    for i, rows in enumerate(spans):
        for j in range(i, len(parts)):
            torch.mm(parts[i], parts[j].T, out=out[rows, spans[j]])
            if j > i:
                out[spans[j], rows].copy_(out[rows, spans[j]].T)
    return out


def full_spectrum_dtype(device: torch.device) -> torch.dtype:
    """Float64 where the device has it (CPU, CUDA), float32 elsewhere (MPS has no float64).

    Effective rank and energy90 weigh the small eigenvalues, which a float32 Gram cannot resolve
    below ~n·1e-7 of λ₁ (a spectrum with a 1e-5 tail came out at effective rank 2.3 instead of
    11.3), so the full-spectrum route uses float64 even on GPUs where it is slow; those metrics
    are opt-in, and their cost is in ``benchmarks/RESULTS.md``.
    """
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def top_dtype(device: torch.device) -> torch.dtype:
    """The dtype for λ₁ alone: float64 where it is fast (CPU, data-centre CUDA GPUs), else float32.

    Consumer and workstation GPUs run float64 at 1/32 to 1/64 of their float32 rate; a float32
    eigensolver finds λ₁ to ~1e-6, well inside the 1e-3 asked of stable rank.
    """
    if device.type == "cpu" or (device.type == "cuda" and _fast_float64_cuda(device)):
        return torch.float64
    return torch.float32


@functools.cache
def _fast_float64_cuda(device: torch.device) -> bool:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) in FAST_FLOAT64_CUDA


def empty_row(x: torch.Tensor) -> torch.Tensor:
    """The result row of a matrix with no rows or no columns: NaN metrics, finite, zero energy."""
    nan = x.new_full((), math.nan, dtype=full_spectrum_dtype(x.device))
    zero, one = torch.zeros_like(nan), torch.ones_like(nan)
    return torch.stack([nan, nan, nan, nan, zero, one, zero])


def exact_gram(
    x: torch.Tensor, metrics: frozenset[str] | set[str], wide: bool = False
) -> torch.Tensor:
    """The Gram the exact route decomposes (see :func:`row_from_gram`).

    Float64 for a full-spectrum metric or ``wide``: a float64 Gram of float32 entries can neither
    overflow nor underflow. Devices without float64 (MPS) scale the matrix to magnitude 1 first.
    Float32 for the two moment metrics.
    """
    if not (wide or FULL_SPECTRUM & set(metrics)):
        return gram_matrix(x)[0]
    dtype = full_spectrum_dtype(x.device)
    return gram_matrix(x.to(dtype) if dtype == torch.float64 else _scaled(x))[0]


def given_gram(
    gram: torch.Tensor, metrics: frozenset[str] | set[str], wide: bool = False
) -> torch.Tensor:
    """A Gram formed elsewhere (a reduction across processes) in the dtype :func:`exact_gram` uses."""
    if not (wide or FULL_SPECTRUM & set(metrics)):
        return gram.float()
    dtype = full_spectrum_dtype(gram.device)
    return gram.to(dtype) if dtype == torch.float64 else gram.float() / gram.abs().amax().clamp_min(TINY)


def row_from_gram(
    gram: torch.Tensor, metrics: frozenset[str] | set[str], wide: bool = False
) -> torch.Tensor:
    """The result row of the exact route from its Gram, on the Gram's device.

    :func:`ndtracker.spectra.measure_many` calls this on the host for small Grams (at most
    :data:`HOST_SIDE`), after the sample's one transfer, so the eigensolver (whose error check is a
    host synchronisation on a GPU) never runs on the device for them.
    """
    if wide or FULL_SPECTRUM & set(metrics):
        return _wide_row(gram, metrics)
    return _moments_row(gram, metrics)


def _wide_row(gram: torch.Tensor, metrics: frozenset[str] | set[str]) -> torch.Tensor:
    """Every eigenvalue of the (float64) Gram, every metric from them.

    A non-finite entry shows in the trace (every entry is in one diagonal sum of squares), which
    gives the finite flag for free; non-finite entries are zeroed so LAPACK never sees them.
    """
    dtype = full_spectrum_dtype(gram.device)
    energy = torch.trace(gram).to(dtype)
    eigenvalues = torch.linalg.eigvalsh(gram.nan_to_num(0.0, 0.0, 0.0))
    values = metrics_from_eigenvalues(eigenvalues).to(dtype)
    # The two moment metrics from the trace and ‖G‖²_F, not from the eigenvalues: those below the
    # Gram's round-off are zeroed, and in float32 that cuts small real ones too (a 1e-5 tail)
    top = eigenvalues[-1].to(dtype)
    squares = gram.square().sum().to(dtype)
    values = torch.cat([torch.stack([energy / top, energy.square() / squares]), values[2:]])
    if set(metrics) != set(METRICS):  # NaN for the metrics not asked for
        keep = [1.0 if m in metrics else math.nan for m in METRICS]
        values = values * torch.tensor(keep, dtype=values.dtype, device=values.device)
    extra = torch.stack([torch.zeros_like(energy), torch.isfinite(energy).to(dtype), energy])
    return torch.cat([values, extra])


def _moments_row(gram: torch.Tensor, metrics: frozenset[str] | set[str]) -> torch.Tensor:
    """Stable rank and participation ratio from a (float32) Gram and its top eigenvalue.

    Float32 is plenty for λ₁, Σλ and Σλ² (it is not for the small eigenvalues that effective rank
    weighs), and costs half as much on CPU, far less on GPUs with slow float64. As on the
    randomized route, a total that is not finite or may have underflowed sets the error estimate
    to NaN, and :func:`ndtracker.spectra.measure_many` redoes the matrix in float64. A stack of
    Grams ``(batch, n, n)`` gives a stack of rows ``(batch, 7)``.
    """
    dtype = full_spectrum_dtype(gram.device)
    total = gram.diagonal(dim1=-2, dim2=-1).sum(-1).to(dtype)
    clean = gram.to(top_dtype(gram.device)).nan_to_num(0.0, 0.0, 0.0)
    top = torch.linalg.eigvalsh(clean)[..., -1].to(dtype)
    nan = torch.full_like(total, math.nan)
    stable = total / top if "stable_rank" in metrics else nan
    participation = nan
    if "participation_ratio" in metrics:
        participation = total.square() / gram.square().sum((-2, -1)).to(dtype)
    error = torch.where(trusted(total), torch.zeros_like(total), nan)
    finite = torch.isfinite(total).to(dtype)
    return torch.stack([stable, participation, nan, nan, error, finite, total], dim=-1)


def moments_rows(grams: torch.Tensor, metrics: frozenset[str] | set[str]) -> torch.Tensor:
    """The exact route's rows ``(batch, 7)`` of a stack of float32 Grams ``(batch, n, n)``, moments only."""
    return _moments_row(grams, metrics)


def trusted(total: torch.Tensor) -> torch.Tensor:
    """Whether a float32 route's Σλ is finite and not small enough to hide underflowed products."""
    return torch.isfinite(total) & ((total > UNDERFLOW) | (total == 0))


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """``x`` over its largest magnitude (all metrics are scale invariant), for float32 Grams."""
    return x / x.abs().amax().clamp_min(TINY)

