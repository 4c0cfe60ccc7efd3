"""Condensation (ndtracker.spectra.condensation) against direct computations and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndtracker.spectra import condensation as module
from ndtracker.spectra.condensation import condensation


def oracle(weight: np.ndarray, bias: np.ndarray | None) -> tuple[float, float]:
    w = weight.reshape(weight.shape[0], -1)
    if bias is not None:
        w = np.concatenate([w, bias[:, None]], axis=1)
    w = w[np.linalg.norm(w, axis=1) > 0]
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    cosines = np.abs(unit @ unit.T)
    m = len(unit)
    pairs = cosines[np.triu_indices(m, 1)]
    eigenvalues = np.linalg.eigvalsh(unit @ unit.T)
    return float(np.mean(pairs >= 0.9)), float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def test_duplicated_neurons_condense_to_one_direction():
    row = torch.randn(1, 7)
    weight = row.repeat(9, 1) * torch.linspace(0.1, 5, 9)[:, None]  # norms differ: only direction counts
    weight[::2] *= -1  # antiparallel neurons lie on the same line
    got = condensation(weight, torch.zeros(9))
    assert got == pytest.approx((1.0, 1.0))


def test_orthogonal_neurons_give_zero_and_full_width():
    weight = torch.linalg.qr(torch.randn(6, 6))[0] * torch.arange(1.0, 7.0)[:, None]
    assert condensation(weight) == pytest.approx((0.0, 6.0))


@pytest.mark.parametrize("shape", [(20, 5), (5, 20), (8, 3, 3, 3)])
def test_matches_the_direct_computation(shape):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight[1] = weight[0] * 3  # one close pair at least
    bias = torch.randn(shape[0], generator=generator, dtype=torch.float64)
    assert condensation(weight, bias) == pytest.approx(oracle(weight.numpy(), bias.numpy()), rel=1e-9)


def test_the_bias_is_one_more_input_coordinate():
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert condensation(weight)[0] == 1.0
    assert condensation(weight, torch.tensor([5.0, 0.0]))[0] == 0.0  # the bias pulls them apart


def test_zero_neurons_are_left_out():
    weight = torch.zeros(5, 3)
    weight[0], weight[1] = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 2, 0])
    assert condensation(weight) == pytest.approx((0.0, 2.0))
    assert all(math.isnan(v) for v in condensation(torch.zeros(4, 3)))


def test_invariant_to_a_rotation_of_the_inputs_and_a_scale():
    weight = torch.randn(30, 4, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    assert condensation(3 * weight @ rotation) == pytest.approx(condensation(weight), rel=1e-9)


def test_many_neurons_estimate_the_pair_fraction_on_a_subsample(monkeypatch):
    monkeypatch.setattr(module, "MAX_NEURONS", 50)
    weight = torch.randn(400, 3, dtype=torch.float64)
    fraction, directions = condensation(weight)
    want = oracle(weight.numpy(), None)
    assert directions == pytest.approx(want[1], rel=1e-9)  # every neuron
    assert abs(fraction - want[0]) < 0.1


def test_float32_and_huge_weights_stay_finite():
    weight = torch.full((3, 4), 3e38)
    assert condensation(weight) == pytest.approx((1.0, 1.0))
