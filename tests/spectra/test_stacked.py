"""Same-shape matrices measured as one stack: the figures of an exact oracle, streams kept apart."""

from __future__ import annotations

import pytest
import torch

from ndtracker import spectra
from ndtracker.spectra import Job, StreamingSpectrum, stacked
from ndtracker.spectra.stacked import stack_key


def decaying(rows: int, cols: int, seed: int, exponent: float) -> torch.Tensor:
    """A matrix with singular values ∝ i^-exponent (a different spectrum per seed and exponent)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, min(rows, cols), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, min(rows, cols), generator=g, dtype=torch.float64)).Q
    s = torch.arange(1, min(rows, cols) + 1, dtype=torch.float64) ** -exponent
    return ((u * s) @ v.T).float()


def oracle(x: torch.Tensor) -> tuple[float, float]:
    lam = torch.linalg.svdvals(x.double()) ** 2
    return (lam.sum() / lam[0]).item(), (lam.sum() ** 2 / lam.square().sum()).item()


ROUTES = [
    ((300, 200), "randomized", ("stable_rank",), "lanczos"),
    ((150, 400), "randomized", ("stable_rank",), "lanczos"),
    ((300, 200), "randomized", ("stable_rank", "participation_ratio"), "gram"),
    ((150, 400), "randomized", ("stable_rank", "participation_ratio"), "gram"),
    ((64, 300), "exact", ("stable_rank", "participation_ratio"), "moments"),
    ((300, 40), "exact", ("stable_rank",), "moments"),
]


@pytest.mark.parametrize(("shape", "estimator", "metrics", "route"), ROUTES)
def test_a_stack_measures_each_member_as_the_oracle(shape, estimator, metrics, route):
    metrics = frozenset(metrics)
    states = [StreamingSpectrum(seed=k) for k in range(5)]
    for sample in range(3):  # cold, then warm from each stream's own direction
        matrices = [decaying(*shape, seed=10 * sample + k, exponent=0.3 + 0.2 * k) for k in range(5)]
        assert stack_key(matrices[0], estimator, metrics, states[0], False)[0] == route
        results = spectra.measure_many([Job(x, estimator, metrics, s) for x, s in zip(matrices, states)])
        for x, result in zip(matrices, results):
            stable, participation = oracle(x)
            assert result.stable_rank == pytest.approx(stable, rel=1e-3)
            if "participation_ratio" in metrics:
                assert result.participation_ratio == pytest.approx(participation, rel=1e-4)
            assert result.lambda_error <= spectra.TOLERANCE
    if estimator == "randomized":  # each stream keeps its own unit direction in feature space
        for x, state in zip(matrices, states):
            assert state.basis.shape == (shape[1], 1) and state.samples == 3
            top = torch.linalg.svd(x.double(), full_matrices=False).Vh[0]
            assert abs(float(top @ state.basis[:, 0].double())) == pytest.approx(1.0, abs=1e-2)


def test_stacks_are_cut_to_a_bounded_size(monkeypatch):
    """More members than fit the byte bound run in several stacks, with the same figures."""
    matrices = [decaying(100, 50, seed=k, exponent=0.5 + 0.1 * k) for k in range(7)]
    metrics = frozenset(("stable_rank",))
    whole = spectra.measure_many([Job(x, "exact", metrics) for x in matrices])
    monkeypatch.setattr(stacked, "STACK_BYTES", 2 * 100 * 50 * 4)
    assert [len(c) for c in stacked.chunks(list(range(7)), (100, 50))] == [2, 2, 2, 1]
    cut = spectra.measure_many([Job(x, "exact", metrics) for x in matrices])
    assert [r.stable_rank for r in cut] == pytest.approx([r.stable_rank for r in whole], rel=1e-6)


def test_non_finite_and_zero_members_do_not_spoil_the_stack():
    good = decaying(120, 60, seed=1, exponent=0.5)
    bad, zero = good.clone(), torch.zeros_like(good)
    bad[3, 4] = float("nan")
    metrics = frozenset(("stable_rank",))
    results = spectra.measure_many([Job(x, "randomized", metrics, StreamingSpectrum()) for x in (good, bad, zero)])
    assert results[0].stable_rank == pytest.approx(oracle(good)[0], rel=1e-3)
    assert not results[1].finite
    assert results[2].energy == 0
