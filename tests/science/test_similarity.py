"""Linear CKA: identities, invariances, independence, statuses, the example row plan."""

from __future__ import annotations

import math

import pytest
import torch

from ndtracker.spectra.similarity import MIN_ROWS, cka_matrix, example_matrix, linear_cka


def _features(rows: int = 64, cols: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_rotated_and_scaled_copies_give_one():
    x = _features()
    rotation, _ = torch.linalg.qr(_features(10, 10, seed=1))
    result = cka_matrix([x, x.clone(), x @ rotation, 7.5 * x])
    assert result.status == ("ok",) * 4
    assert torch.allclose(result.cka, torch.ones(4, 4, dtype=torch.float64), atol=1e-10)


def test_independent_random_features_give_about_zero():
    x, y = _features(4000, 5, seed=2), _features(4000, 5, seed=3)
    assert cka_matrix([x, y]).cka[0, 1] < 0.01
    assert linear_cka(x, y) < 0.01


def test_symmetric_unit_diagonal_and_equal_to_the_feature_side_formula():
    layers = [_features(50, cols, seed=cols) for cols in (3, 8, 20)]
    layers.append(layers[0] @ _features(3, 6, seed=9))  # a linear map of layer 0
    result = cka_matrix(layers)
    assert torch.equal(result.cka, result.cka.T)
    assert torch.equal(result.cka.diagonal(), torch.ones(4, dtype=torch.float64))
    for a in range(4):
        for b in range(4):
            if a != b:
                assert result.cka[a, b].item() == pytest.approx(linear_cka(layers[a], layers[b]), rel=1e-9)


def test_too_few_rows_give_a_status_not_a_number():
    result = cka_matrix([_features(MIN_ROWS - 1, 4), _features(MIN_ROWS - 1, 4, seed=1)])
    assert result.status == ("few_rows", "few_rows") and result.rows == MIN_ROWS - 1
    assert result.pair_status(0, 1) == "few_rows"


def test_a_constant_or_nonfinite_layer_is_flagged_and_the_others_still_compare():
    x = _features()
    constant = torch.full((64, 3), 0.1, dtype=torch.float64)
    broken = x.clone()
    broken[0, 0] = float("inf")
    result = cka_matrix([x, constant, broken, 2 * x])
    assert result.status == ("ok", "zero", "nonfinite", "ok")
    assert result.pair_status(0, 1) == "zero" and math.isnan(result.cka[0, 1])
    assert result.cka[0, 3].item() == pytest.approx(1.0)


def test_rows_beyond_the_shortest_layer_are_dropped():
    x = _features(40, 4)
    assert cka_matrix([x, x[:30]]).rows == 30
    assert cka_matrix([x, x[:30]]).cka[0, 1].item() == pytest.approx(1.0)


def test_example_matrix_pools_convolutions_and_keeps_the_first_examples():
    conv = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    pooled = example_matrix(conv, channels_first=True, rows=1)
    assert torch.equal(pooled, conv[:1].flatten(2).mean(2))
    tokens = torch.randn(5, 3, 4)
    assert torch.equal(example_matrix(tokens, rows=None), tokens.reshape(5, 12))
    assert example_matrix(torch.randn(10, 6), rows=4).shape == (4, 6)
