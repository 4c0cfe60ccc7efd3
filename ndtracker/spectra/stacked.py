"""Same-shape matrices of a sample measured as one stack: its operation count does not grow with them.

A transformer has tens of layers of a few shapes. Measured one by one, every layer costs the
estimator's whole sequence of small tensor operations (a warm Lanczos run is about 40), and at
these sizes a sample's time is in the number of operations, not in the arithmetic. Stacked, the
matrices of one shape cost one run of batched operations (``bmm``), whatever their number.

Three routes, for the moment metrics only (the full-spectrum metrics are measured job by job,
:mod:`ndtracker.spectra.batch`):

* ``lanczos``: stable rank alone, randomized: Σλ = ‖X‖_F² and λ₁ by Lanczos on ``XᵀX`` applied as
  two batched products with ``X`` (no Gram is formed: ``2·n·d`` per step instead of ``n·d·min``
  once), warm-started per stream from the previous sample's top direction;
* ``gram``: with the participation ratio, randomized, small side at most
  :data:`~ndtracker.spectra.lanczos.BATCH_SIDE`: one batched Gram product gives Σλ and Σλ², and
  Lanczos runs on the stacked Grams;
* ``moments``: exact, small side at most :data:`~ndtracker.spectra.exact.HOST_SIDE`: one batched
  Gram product, decomposed on the host after the sample's one transfer.

A stack copies its members, so a run stacks at most :data:`STACK_BYTES` of them (the transient
memory of a sample's measurement is bounded, whatever the model's size); more members of one shape
run in several stacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ndtracker.spectra.exact import HOST_SIDE, TINY, moments_rows
from ndtracker.spectra.lanczos import BATCH_SIDE, WARM_NOISE, StreamingSpectrum, _lanczos, _ritz_top, result_rows
from ndtracker.vocabulary import FULL_SPECTRUM

__all__ = ["STACK_BYTES", "stack_key", "chunks", "run_stack"]

STACK_BYTES = 64 * 2**20  # bytes of matrices stacked into one run at most


def stack_key(
    x: torch.Tensor, estimator: str, metrics: frozenset[str], state: StreamingSpectrum | None, gram: bool
) -> tuple | None:
    """The stack a job joins (jobs with equal keys are measured together), or None for its own route.

    Args:
        x: The job's float32 matrix ``(rows, features)``.
        estimator: ``"exact"`` or ``"randomized"``.
        metrics: The metrics asked for.
        state: The stream's state (its warm direction decides between warm and cold stacks).
        gram: Whether ``x`` is a Gram rather than a matrix (never stacked).
    """
    rows, cols = x.shape
    if gram or rows == 0 or cols == 0 or FULL_SPECTRUM & metrics:
        return None
    warm = state is not None and state.basis is not None and state.basis.shape[0] == cols
    if estimator == "randomized" and "participation_ratio" not in metrics:
        return ("lanczos", (rows, cols), x.device, metrics, warm)
    if estimator == "randomized" and min(rows, cols) <= BATCH_SIDE:
        return ("gram", (rows, cols), x.device, metrics, warm)
    if estimator == "exact" and min(rows, cols) <= HOST_SIDE:
        return ("moments", (rows, cols), x.device, metrics)
    return None


def chunks(members: list, shape: tuple[int, int]) -> list[list]:
    """``members`` in runs of at most :data:`STACK_BYTES` of float32 matrices of ``shape`` (one at least)."""
    size = max(1, STACK_BYTES // max(1, 4 * shape[0] * shape[1]))
    return [members[start : start + size] for start in range(0, len(members), size)]


def run_stack(
    key: tuple, matrices: list[torch.Tensor], states: list[StreamingSpectrum]
) -> StackedLanczos | StackedGrams:
    """Start one stack's device work (no host synchronisation); conclude it after the transfer."""
    metrics = key[3]
    x = matrices[0].unsqueeze(0) if len(matrices) == 1 else torch.stack(matrices)  # a lone member: no copy
    if key[0] == "moments":
        row_side = x.shape[1] <= x.shape[2]
        a = x if row_side else x.transpose(1, 2)
        return StackedGrams([torch.bmm(a, a.transpose(1, 2))], metrics)
    if key[0] == "gram":
        return _gram_stack(x, states, metrics, warm=key[4])
    return _lanczos_stack(x, states, metrics, warm=key[4])


@dataclass
class StackedGrams:
    """A stack of small exact Grams, decomposed on the host after the sample's transfer."""

    parts: list[torch.Tensor]
    metrics: frozenset[str]

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        grams = parts[0].to(self.parts[0].dtype)  # in the precision it was formed in
        return moments_rows(grams, self.metrics).tolist()


@dataclass
class StackedLanczos:
    """A stack's Lanczos run, done on the device, waiting for the sample's transfer."""

    states: list[StreamingSpectrum]
    metrics: frozenset[str]
    basis: torch.Tensor  # (batch, depth + 1, features)
    parts: list[torch.Tensor]  # coefficients, last β, Σλ (and Σλ² on the Gram route)
    rows: torch.Tensor | None = None  # the stack, when the Lanczos vectors live in its row space

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        """The members' rows; each stream keeps its top direction (feature space, unit).

        A Ritz vector ``u`` of ``XXᵀ`` maps to the feature-space unit vector ``Xᵀu / sqrt(θ)``.
        """
        coefficients, beta, total = parts[:3]
        theta, error, ritz = _ritz_top(coefficients, beta)
        top = torch.bmm(ritz.to(self.basis.device, self.basis.dtype).unsqueeze(1), self.basis)
        if self.rows is not None:
            norms = theta.sqrt().clamp_min(TINY).to(top.device, top.dtype)
            top = torch.bmm(top, self.rows) / norms.view(-1, 1, 1)
        for state, direction in zip(self.states, top.transpose(1, 2).unbind(0)):
            state.basis, state.samples = direction, state.samples + 1
        return result_rows(self.metrics, total, theta, error, parts[3] if len(parts) > 3 else None)


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """‖X‖_F² of each matrix of the stack ``(batch, rows, features)``, as one batched dot product:
    no squared copy is formed (half the time of ``x.square().sum()`` on a 512 x 784 weight; the
    dot's float32 accumulation is within 1e-7 of float64 there)."""
    flat = x.reshape(x.shape[0], 1, -1)
    return torch.bmm(flat, flat.transpose(1, 2)).view(-1)


def _start(x: torch.Tensor, states: list[StreamingSpectrum], warm: bool) -> torch.Tensor:
    """Each stream's previous top direction plus a little noise, or noise alone: ``(batch, features)``."""
    batch, _, features = x.shape
    start = states[0].noise(batch * features, x).view(batch, features)
    if not warm:
        return start
    previous = torch.stack([state.basis for state in states])[:, :, 0]
    return torch.add(previous, start, alpha=WARM_NOISE / math.sqrt(features))


def _gram_stack(
    x: torch.Tensor, states: list[StreamingSpectrum], metrics: frozenset[str], warm: bool
) -> StackedLanczos:
    """Σλ, Σλ² and Lanczos from the stacked Grams of the smaller side (float32)."""
    row_side = x.shape[1] <= x.shape[2]
    a = x if row_side else x.transpose(1, 2)
    grams = torch.bmm(a, a.transpose(1, 2))
    total = grams.diagonal(dim1=1, dim2=2).sum(1)
    squares = grams.square().sum((1, 2))  # pairwise sum, as the single-job route
    start = _start(x, states, warm)
    if row_side:  # the feature-space direction seen from the row side
        start = torch.bmm(x, start.unsqueeze(2))[:, :, 0]
    depth = min(max(state.depth for state in states), grams.shape[1] - 1)
    apply = lambda q: torch.bmm(q, grams)  # noqa: E731  (q G = (G q)ᵀ: G is symmetric)
    coefficients, beta, basis = _lanczos(apply, start, depth)
    return StackedLanczos(states, metrics, basis, [coefficients, beta, total, squares], x if row_side else None)


def _lanczos_stack(
    x: torch.Tensor, states: list[StreamingSpectrum], metrics: frozenset[str], warm: bool
) -> StackedLanczos:
    """Lanczos on every ``XᵀX`` of the stack ``(batch, rows, features)`` at once."""
    total = squared_norms(x)
    start = _start(x, states, warm)
    depth = min(max(state.depth for state in states), x.shape[2] - 1)
    xt = x.transpose(1, 2)
    apply = lambda q: torch.bmm(torch.bmm(q, xt), x)  # noqa: E731  q XᵀX, as (batch, 1, features)
    coefficients, beta, basis = _lanczos(apply, start, depth)
    return StackedLanczos(states, metrics, basis, [coefficients, beta, total])
