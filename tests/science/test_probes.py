"""Linear probes against direct computations on small cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndtracker.spectra.probes import MIN_PROBE_ROWS, probe_accuracies, probe_accuracy, split


def _ridge_oracle(x: np.ndarray, y: np.ndarray, ridge: float) -> float:
    """The documented probe, written out with numpy on the documented split."""
    fit, scored = (index.numpy() for index in split(x.shape[0]))
    fx, fy, tx, ty = x[fit], y[fit], x[scored], y[scored]
    classes = int(y.max()) + 1
    targets = np.eye(classes)[fy]
    mx, my = fx.mean(0), targets.mean(0)
    xc, tc = fx - mx, targets - my
    lam = ridge * (xc**2).sum() / x.shape[1]
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ tc)
    return float(((tx - mx) @ w + my).argmax(1).__eq__(ty).mean())


def test_separable_classes_are_read_perfectly():
    x = torch.eye(4).repeat(6, 1) * 3.0
    assert probe_accuracy(x, torch.arange(4).repeat(6)).accuracy == 1.0


def test_the_split_is_fixed_halves_covering_every_row():
    fit, scored = split(11)
    assert len(fit) == 6 and len(scored) == 5
    assert sorted(fit.tolist() + scored.tolist()) == list(range(11))
    assert torch.equal(split(11)[0], fit)


def test_random_labels_score_near_chance():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (2000,), generator=generator)
    assert abs(probe_accuracy(x, labels).accuracy - 0.25) < 0.05


@pytest.mark.parametrize("features", [6, 40])  # primal (n > p) and dual (n < p) solves
def test_matches_the_numpy_oracle(features):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, features))
    y = rng.integers(0, 3, 30)
    x[:, 0] += 2.0 * y
    result = probe_accuracy(torch.tensor(x), torch.tensor(y), ridge=0.1)
    assert result.status == "ok" and (result.fit_rows, result.scored_rows) == (15, 15)
    assert result.accuracy == pytest.approx(_ridge_oracle(x, y, 0.1))


def test_scale_and_rotation_do_not_change_the_probe():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(np.int64)
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    base = probe_accuracy(torch.tensor(x), torch.tensor(y)).accuracy
    assert probe_accuracy(torch.tensor(1e4 * x @ rotation), torch.tensor(y)).accuracy == pytest.approx(base)


def test_too_few_rows_and_nonfinite_give_a_status():
    small = probe_accuracy(torch.randn(MIN_PROBE_ROWS - 1, 3), torch.tensor([0, 1, 0]))
    assert small.status == "few_rows" and math.isnan(small.accuracy)
    x = torch.randn(10, 3)
    x[2, 1] = float("nan")
    bad = probe_accuracy(x, torch.arange(10) % 2)
    assert bad.status == "nonfinite" and math.isnan(bad.accuracy)


def test_many_layers_at_once_equal_one_by_one():
    labels = torch.arange(20) % 3
    layers = [torch.randn(20, 4), torch.randn(20, 30), torch.randn(2, 4)]
    together = probe_accuracies(layers, labels)
    assert [r.status for r in together] == ["ok", "ok", "few_rows"]
    assert together[0] == probe_accuracy(layers[0], labels)


@pytest.mark.parametrize("labels", [torch.rand(10), torch.zeros(10, 2, dtype=torch.long)])
def test_bad_labels_are_refused(labels):
    with pytest.raises(ValueError, match="labels must be a 1-D integer tensor"):
        probe_accuracy(torch.randn(10, 3), labels)


def test_fewer_labels_than_rows_and_bad_ridge_are_refused():
    with pytest.raises(ValueError, match="labels has 5 rows"):
        probe_accuracy(torch.randn(10, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="ridge must be positive"):
        probe_accuracy(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), ridge=0.0)
