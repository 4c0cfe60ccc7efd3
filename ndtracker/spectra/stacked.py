"""Same-shape matrices of a sample measured as one stack: its operation count does not grow with them.

A transformer has tens of layers of a few shapes. Measured one by one, every layer costs the
estimator's whole sequence of small tensor operations (a warm Lanczos run is about 40), and at
these sizes a sample's time is in the number of operations, not in the arithmetic. Stacked, the
matrices of one shape cost one run of batched operations (``bmm``), whatever their number.

Two routes, for the moment metrics only (the full-spectrum metrics and the Gram-based Lanczos of
the participation ratio keep their own batching, :mod:`ndtracker.spectra.batch`):

* ``lanczos``: stable rank alone, randomized: Σλ = ‖X‖_F² and λ₁ by Lanczos on ``XᵀX`` applied as
  two batched products with ``X`` (no Gram is formed: ``2·n·d`` per step instead of ``n·d·min``
  once), warm-started per stream from the previous sample's top direction;
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

from ndtracker.spectra.exact import HOST_SIDE, moments_rows
from ndtracker.spectra.lanczos import WARM_NOISE, StreamingSpectrum, _lanczos, _ritz_top, result_rows
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
    if estimator == "randomized" and "participation_ratio" not in metrics:
        warm = state is not None and state.basis is not None and state.basis.shape[0] == cols
        return ("lanczos", (rows, cols), x.device, metrics, warm)
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
    x = torch.stack(matrices)
    if key[0] == "moments":
        row_side = x.shape[1] <= x.shape[2]
        a = x if row_side else x.transpose(1, 2)
        return StackedGrams([torch.bmm(a, a.transpose(1, 2))], metrics)
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
    parts: list[torch.Tensor]  # coefficients, last β, Σλ

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        """The members' rows; each stream keeps its top direction (feature space, unit)."""
        coefficients, beta, total = parts
        theta, error, ritz = _ritz_top(coefficients, beta)
        top = torch.bmm(ritz.to(self.basis.device, self.basis.dtype).unsqueeze(1), self.basis)
        for state, direction in zip(self.states, top.transpose(1, 2).unbind(0)):
            state.basis, state.samples = direction, state.samples + 1
        return result_rows(self.metrics, total, theta, error, None)


def _lanczos_stack(
    x: torch.Tensor, states: list[StreamingSpectrum], metrics: frozenset[str], warm: bool
) -> StackedLanczos:
    """Lanczos on every ``XᵀX`` of the stack ``(batch, rows, features)`` at once."""
    batch, _, features = x.shape
    total = x.square().sum((1, 2))
    start = states[0].noise(batch * features, x).view(batch, features)
    if warm:
        previous = torch.stack([state.basis for state in states])[:, :, 0]
        start = torch.add(previous, start, alpha=WARM_NOISE / math.sqrt(features))
    depth = min(max(state.depth for state in states), features - 1)
    xt = x.transpose(1, 2)
    apply = lambda q: torch.bmm(torch.bmm(q, xt), x)  # noqa: E731  q XᵀX, as (batch, 1, features)
    coefficients, beta, basis = _lanczos(apply, start, depth)
    return StackedLanczos(states, metrics, basis, [coefficients, beta, total])
