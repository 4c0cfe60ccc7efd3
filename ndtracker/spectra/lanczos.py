"""The streaming (randomized) estimator: λ₁ by warm-started Lanczos, Σλ and Σλ² from the Gram.

The two moments Σλ = tr G and Σλ² = ‖G‖_F² come exactly from the float32 Gram, and λ₁ from a
Lanczos iteration started from the top direction of the previous sample (:class:`StreamingSpectrum`),
with a little random noise mixed in so a new top direction is not missed. No eigendecomposition of
the Gram, so it gives ``stable_rank`` and ``participation_ratio`` only. When Σλ² is not asked for,
no Gram is formed at all: the iteration applies ``X`` and ``Xᵀ`` directly.

Why Lanczos with one vector: on a CPU a product of a 256 x 256 Gram with a vector costs a few
microseconds, with an 8-column block seven times that, and every tensor operation a few
microseconds of dispatch, so one vector gets several times the polynomial degree of a block for the
same time. Each step orthogonalises against every earlier vector twice (once is not enough: after
convergence, single-pass Gram–Schmidt lets ghost copies of λ₁ in, and the Ritz value then
overshoots λ₁ by up to 3x with a tiny residual). The tridiagonal matrix is read off the
orthogonalisation coefficients, so the Rayleigh–Ritz step needs no extra product. Streams whose
Grams have the same small size run one batched Lanczos iteration together, since at these sizes
the cost is the number of operations, not the arithmetic.

Every estimate returns, besides the metrics, an estimate of the relative error of λ₁ (from the Ritz
residual), checked on the host by :func:`ndtracker.spectra.measure_many`: a miss is redone exactly
and the stream deepens its iteration for the next sample (:meth:`StreamingSpectrum.adapt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ndtracker.spectra.exact import TINY, gram_matrix, trusted

KRYLOV_BLOCK = 1  # warm-start vectors kept per stream: the previous sample's top direction
COLD_DEPTH = 48  # Lanczos steps with no previous direction: enough for a flat (Marchenko-Pastur) top
MIN_DEPTH = 2  # Lanczos steps at least, warm
MAX_DEPTH = 128  # Lanczos steps at most; a sample that still misses TOLERANCE is redone exactly
TOLERANCE = 2.5e-4  # target relative error of λ₁: 4x inside the 1e-3 asked of stable_rank, as the
# residual estimate was measured up to 1.7x below the true error at depths 2-3
WARM_NOISE = 0.1  # weight of a random direction mixed into a warm start, so a new top is not missed
FLOOR_DECAY = 32  # samples per step the depth floor of a stream sinks after a miss
GAP_TRUST = 0.05  # below this relative Ritz gap (a flat top), trust only the plain residual bound
BATCH_SIDE = 512  # randomized Grams up to this size share batched Lanczos runs (stacking copies)


@dataclass
class StreamingSpectrum:
    """Warm-start state of one (layer, space) stream: its top right-singular direction.

    Attributes:
        basis: ``(features, KRYLOV_BLOCK)``: the unit top direction of the previous sample, or
            ``None``.
        samples: How many samples this stream has measured.
        depth: Lanczos steps for the next sample (see :meth:`adapt`).
        fallbacks: How many samples missed the tolerance and were redone exactly.
        floor: Depth of the last miss, sinking slowly; :meth:`adapt` stays a quarter above it.
        seed: Seed of the random start and of the noise mixed into warm starts.
    """

    basis: torch.Tensor | None = field(default=None, repr=False)
    samples: int = 0
    depth: int = COLD_DEPTH
    fallbacks: int = 0
    floor: float = 0.0
    seed: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Forget the direction (the next sample starts cold, at :data:`COLD_DEPTH` steps)."""
        self.basis, self.depth = None, COLD_DEPTH

    def adapt(self, error: float) -> None:
        """Tune the Lanczos depth from the last sample's λ₁ error estimate (a host float).

        Double it after a miss (> :data:`TOLERANCE`); add a quarter when the estimate came within
        10x of the tolerance; take an eighth off when it was 1000x better (half when 1e9x),
        but never back to within a quarter of the depth of the last miss, a floor that sinks by one
        step every :data:`FLOOR_DECAY` samples. Lanczos error falls geometrically with depth, so a
        stream settles at a few steps for a warm, decaying spectrum and at 30-50 for a flat one
        whose top direction is new every batch; the floor keeps a flat stream, whose error varies a
        lot from batch to batch, from sliding back to a depth that misses (each miss is redone
        exactly, at several times the cost).
        """
        if math.isnan(error):  # an untrusted sample (non-finite entries): its direction is garbage
            self.reset()
            return
        self.floor = max(self.floor - 1 / FLOOR_DECAY, 0.0)
        if not error <= TOLERANCE:
            self.floor = float(self.depth)
            self.depth = min(2 * self.depth, MAX_DEPTH)
        elif error > TOLERANCE / 10:
            self.depth = min(self.depth + self.depth // 4 + 1, MAX_DEPTH)
        elif error < TOLERANCE * 1e-3:
            cut = self.depth // 2 if error < TOLERANCE * 1e-9 else self.depth // 8
            lowest = max(MIN_DEPTH, math.ceil(1.25 * self.floor) + 1 if self.floor else 0)
            self.depth = max(self.depth - max(cut, 1), min(lowest, self.depth))

    def noise(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """A standard normal vector from this stream's own generator, on ``like``'s device."""
        if self.generator is None or self.generator.device != like.device:
            self.generator = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.randn(size, generator=self.generator, device=like.device, dtype=like.dtype)


@dataclass
class Prepared:
    """A randomized job up to its Lanczos run: the operator, its moments and its start vector."""

    x: torch.Tensor
    metrics: frozenset[str]
    state: StreamingSpectrum
    gram: torch.Tensor | None  # (n, n) float32 Gram, or None: apply X and Xᵀ directly
    row_side: bool  # the Gram is XXᵀ (its vectors live in row space)
    total: torch.Tensor  # Σλ
    squares: torch.Tensor | None  # Σλ², when the participation ratio is wanted
    start: torch.Tensor  # (n,) start vector in the operator's space
    depth: int


def group_key(x: torch.Tensor, metrics: frozenset[str]) -> tuple | None:
    """Jobs with equal keys share a batched Lanczos run; None runs alone (no Gram, or large).

    Only Grams of one size are batched: padding smaller ones with zeros was measured slower
    (the padded products read several times the memory, which costs more than the tensor
    operations a separate run adds).
    """
    side = min(x.shape)
    if "participation_ratio" not in metrics or side > BATCH_SIDE:
        return None
    return (side, x.device, frozenset(metrics))


def prepare(
    x: torch.Tensor, metrics: frozenset[str], state: StreamingSpectrum,
    out: torch.Tensor | None = None,
) -> Prepared:  # fmt: skip
    """Moments from the float32 Gram (when Σλ² is needed) and the warm start mapped onto it.

    ``out`` is where to form the Gram (its slot in a batch). No scaling pass: when Σλ is not
    finite (a non-finite entry, or an overflow) or so small that products may have underflowed,
    the error estimate comes back NaN and :func:`ndtracker.spectra.measure_many` redoes the matrix
    exactly.
    """
    if state.basis is not None and state.basis.shape[0] != x.shape[1]:
        state.reset()
    start = _start(state, x)
    if "participation_ratio" not in metrics:
        total = x.square().sum()
        depth = min(state.depth, x.shape[1] - 1)
        return Prepared(x, metrics, state, None, False, total, None, start, depth)
    gram, row_side = gram_matrix(x, out)
    total = torch.trace(gram)
    squares = gram.square().sum()  # pairwise sum: 1e-7 (vector_norm: 1e-5 at n=1024)
    first = torch.mv(x, start) if row_side else start
    depth = min(state.depth, gram.shape[0] - 1)
    return Prepared(x, metrics, state, gram, row_side, total, squares, first, depth)


def prepare_gram(
    gram: torch.Tensor, metrics: frozenset[str], state: StreamingSpectrum,
    out: torch.Tensor | None = None,
) -> Prepared:  # fmt: skip
    """As :func:`prepare`, for a job given by its float32 Gram ``(n, n)`` rather than its matrix.

    The stream's direction lives in the Gram's space (a Gram of another size resets it).
    """
    if state.basis is not None and state.basis.shape[0] != gram.shape[1]:
        state.reset()
    if out is not None:
        gram = out.copy_(gram)
    total = torch.trace(gram)
    squares = gram.square().sum() if "participation_ratio" in metrics else None
    depth = min(state.depth, gram.shape[0] - 1)
    return Prepared(gram, metrics, state, gram, False, total, squares, _start(state, gram), depth)


@dataclass
class Krylov:
    """A group's Lanczos run, done on the device, waiting for the sample's host transfer.

    ``parts`` go to the host: the projected matrices, the last Lanczos
    coefficients, Σλ and (for the participation ratio) Σλ² of each member. The Grams are not kept,
    so at most one large Gram is alive at a time.
    """

    members: list[tuple[torch.Tensor, bool, StreamingSpectrum]]  # (x, row_side, state)
    metrics: frozenset[str]
    basis: torch.Tensor  # (batch, depth + 1, n): the Lanczos vectors
    parts: list[torch.Tensor]

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        """The members' result rows from ``parts`` on the host; each stream keeps its direction.

        Rows are laid out as :data:`ndtracker.spectra.exact.ROW_FIELDS`.
        """
        coefficients, beta, total = parts[:3]
        theta, error, ritz = _ritz_top(coefficients, beta)
        _keep_directions(self, theta, ritz)
        return result_rows(self.metrics, total, theta, error, parts[3] if len(parts) > 3 else None)


def result_rows(
    metrics: frozenset[str], total: torch.Tensor, theta: torch.Tensor, error: torch.Tensor,
    squares: torch.Tensor | None,
) -> list[list[float]]:  # fmt: skip
    """Host result rows (:data:`ndtracker.spectra.exact.ROW_FIELDS`) from a batch's Σλ, θ₁, error and Σλ²."""
    nan = torch.full_like(total, math.nan)
    stable = total / theta if "stable_rank" in metrics else nan
    participation = total.square() / squares if squares is not None else nan
    error = torch.where(trusted(total), error.to(total.dtype), nan)
    finite = torch.isfinite(total).to(total.dtype)
    return torch.stack([stable, participation, nan, nan, error, finite, total], dim=1).tolist()


def run(group: list[Prepared], grams: torch.Tensor | None = None) -> Krylov:
    """One batched Lanczos run for a group of prepared jobs; no host synchronisation.

    ``grams`` is the ``(batch, n, n)`` buffer the group's Grams were formed in (see
    :func:`prepare`'s ``out``); a single job runs on its own Gram (or on ``X`` without one).
    """
    first = group[0]
    if first.gram is None:
        x = first.x
        apply = lambda q: torch.mm(torch.mm(q[0], x.T), x).unsqueeze(0)  # noqa: E731  q Xᵀ X
    else:
        batch = first.gram.unsqueeze(0) if grams is None else grams
        apply = lambda q: torch.bmm(q, batch)  # noqa: E731  (q G = (G q)ᵀ: G is symmetric)
    depth = max(p.depth for p in group)
    coefficients, beta, basis = _lanczos(apply, torch.stack([p.start for p in group]), depth)
    parts = [coefficients, beta, torch.stack([p.total for p in group])]
    if first.squares is not None:
        parts.append(torch.stack([p.squares for p in group]))
    members = [(p.x, p.row_side, p.state) for p in group]
    return Krylov(members, first.metrics, basis, parts)


def _keep_directions(krylov: Krylov, theta: torch.Tensor, ritz: torch.Tensor) -> None:
    """Store each stream's unit top direction in feature space, for the next sample's start.

    The top Ritz vector is ``ritz`` (host) in the Lanczos basis (device). A Ritz vector ``u`` of
    ``XXᵀ`` maps to ``Xᵀu`` of norm ``sqrt(θ)``; one of ``XᵀX`` is already a unit feature-space
    vector.
    """
    basis = krylov.basis
    top = torch.bmm(ritz.to(basis.device, basis.dtype).unsqueeze(1), basis)[:, 0]
    norms = theta.sqrt().clamp_min(TINY).tolist()
    for b, (x, row_side, state) in enumerate(krylov.members):
        state.basis = (torch.mv(x.T, top[b]) / norms[b] if row_side else top[b]).unsqueeze(1)
        state.samples += 1


def _start(state: StreamingSpectrum, x: torch.Tensor) -> torch.Tensor:
    """The previous top direction plus a little noise, or pure noise for a cold start."""
    noise = state.noise(x.shape[1], x)
    if state.basis is None:
        return noise
    return torch.add(state.basis[:, 0], noise, alpha=WARM_NOISE / math.sqrt(x.shape[1]))


def _lanczos(apply, start: torch.Tensor, depth: int):
    """Lanczos on a batch of symmetric PSD operators, fully reorthogonalised, on their device.

    Vectors are rows (``(batch, 1, n)``): a batched row-vector times matrix product is several
    times faster on CPU than the batched matrix times column vector.

    Args:
        apply: ``q -> q A`` for a ``(batch, 1, n)`` block of row vectors (``A`` symmetric).
        start: ``(batch, n)`` starting vectors (warm directions or random).
        depth: Steps after the first; the Krylov spaces have ``depth + 1 <= n`` vectors.

    Returns:
        ``(coefficients, beta, basis)``: ``coefficients[b, j, i] = qᵢᵀ A qⱼ`` for ``i <= j`` (the
        lower triangle of the projected matrix, read off the orthogonalisation of each step, so
        the Rayleigh–Ritz step needs no extra product), the last coefficient ``β`` per operator,
        and the ``(batch, depth + 1, n)`` orthonormal basis.
    """
    basis = start.new_zeros(start.shape[0], depth + 1, start.shape[1])
    rows = basis.transpose(1, 2)  # a view: it sees each vector as it is written
    norm = torch.linalg.vector_norm(start, dim=1, keepdim=True).clamp_min(TINY)
    q = basis[:, :1]
    torch.div(start.unsqueeze(1), norm.unsqueeze(1), out=q)
    firsts, seconds = [], []
    for j in range(depth + 1):
        w = apply(q)
        firsts.append(torch.bmm(w, rows))
        w = torch.baddbmm(w, firsts[-1], basis, alpha=-1)
        seconds.append(torch.bmm(w, rows))  # twice is enough (Kahan–Parlett)
        w = torch.baddbmm(w, seconds[-1], basis, alpha=-1)
        beta = torch.linalg.vector_norm(w, dim=2, keepdim=True)
        if j < depth:  # the next vector goes straight into the basis
            q = basis[:, j + 1 : j + 2]
            torch.div(w, beta.clamp_min(TINY), out=q)
    return torch.cat(firsts, dim=1) + torch.cat(seconds, dim=1), beta[:, 0, 0], basis


def _ritz_top(coefficients: torch.Tensor, beta: torch.Tensor):
    """Rayleigh–Ritz on the Lanczos spaces (host, float64): top Ritz values, error estimates, vectors.

    Returns:
        ``(θ₁, relative error estimate of θ₁, top Ritz vector in the Lanczos basis)`` per
        operator, shapes ``(batch,)``, ``(batch,)``, ``(batch, depth + 1)``; θ₁ ≤ λ₁ always. The
        estimate is ``min(‖r‖, ‖r‖²/(θ₁ − θ₂)) / θ₁`` for the Ritz residual ``r`` (its norm is the
        last Lanczos coefficient times the last entry of the Ritz vector, so it costs no product):
        the first term bounds the distance to *some* eigenvalue, the second is the sharper one
        that holds once the Krylov space resolves the gap to λ₂ (Saad, *Numerical Methods for
        Large Eigenvalue Problems*, ch. 4). When the Ritz gap is below :data:`GAP_TRUST` of θ₁ (a
        flat top, as at random init) only ``‖r‖ / θ₁`` is used: there the sharp form was measured
        to miss λ₁ by up to 7e-3 about once in 500 samples (the Krylov space had settled on λ₂
        with a tiny residual), the plain residual never (0 of 1150).
    """
    coefficients = coefficients.nan_to_num(0.0, 0.0, 0.0)  # LAPACK must not see NaN
    tiny = torch.finfo(coefficients.dtype).tiny
    theta, vectors = torch.linalg.eigh(coefficients, UPLO="L")
    top, ritz = theta[:, -1], vectors[:, :, -1]
    residual = (beta * ritz[:, -1]).abs()
    bound = residual
    if theta.shape[1] > 1:  # |λ₁ − θ₁| ≤ ‖r‖, and ≲ ‖r‖²/gap once the gap is resolved
        gap = top - theta[:, -2]
        sharp = torch.minimum(residual, residual.square() / gap.clamp_min(tiny))
        bound = torch.where(gap > GAP_TRUST * top, sharp, residual)
    return top, bound / top.clamp_min(tiny), ritz
