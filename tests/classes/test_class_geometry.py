"""Class geometry (ndtracker.spectra.classes) against direct numpy computations and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from class_oracle import class_statistics as oracle
from ndtracker.spectra.classes import STATISTICS, class_geometry, example_matrix, plan_classes


def clusters(seed: int, classes: int = 4, per_class: int = 30, features: int = 12, spread: float = 1.0):
    """Anisotropic Gaussian classes, each with a clear top axis (power iteration converges)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features)) * 3
    scales = np.concatenate([[3.0], np.linspace(1.5, 0.3, features - 1)])
    labels = np.repeat(np.arange(classes), per_class)
    rotations = [np.linalg.qr(rng.normal(size=(features, features)))[0] for _ in range(classes)]
    noise = np.stack([rotations[c] @ (scales * rng.normal(size=features)) for c in labels])
    return centres[labels] + spread * noise, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_direct_computation(seed):
    h, y = clusters(seed)
    y[:3] = [7, 8, 8]  # a singleton class (skipped) and a two-row class
    got = class_geometry(torch.tensor(h), torch.tensor(y))
    want = oracle(h, y)
    assert got.status == "ok" and got.classes == 5 and got.skipped_classes == 1
    for name in STATISTICS:
        assert getattr(got, name) == pytest.approx(want[name], rel=1e-6, abs=1e-9), name


def test_more_features_than_rows_per_class_matches_too():
    h, y = clusters(3, classes=3, per_class=6, features=40)
    got, want = class_geometry(torch.tensor(h), y), oracle(h, y)
    for name in set(STATISTICS) - {"axes_alignment"}:  # 6 rows in 40 dims: the top axis is still unique
        assert getattr(got, name) == pytest.approx(want[name], rel=1e-6), name


def test_tight_separated_clusters_collapse():
    h, y = clusters(0, spread=1e-4)
    got = class_geometry(torch.tensor(h), y)
    assert got.nc1 < 1e-6 and got.ncc_accuracy == 1.0 and got.radius < 1e-3


def test_identical_class_distributions_give_large_nc1():
    rng = np.random.default_rng(0)
    h, y = rng.normal(size=(400, 10)), np.repeat(np.arange(4), 100)
    got = class_geometry(torch.tensor(h), y)
    assert got.nc1 > 10 and got.ncc_accuracy < 0.6 and got.radius > 3


def test_invariant_to_a_common_rotation_scale_and_shift():
    h, y = clusters(5)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))[0]
    moved = 7.5 * h @ rotation + 3.0
    first = class_geometry(torch.tensor(h), y)
    second = class_geometry(torch.tensor(moved), y)
    for name in STATISTICS:
        assert getattr(second, name) == pytest.approx(getattr(first, name), rel=1e-6), name


def test_float32_on_the_way_in_is_close():
    h, y = clusters(6)
    first = class_geometry(torch.tensor(h), y)
    second = class_geometry(torch.tensor(h, dtype=torch.float32), y)
    assert second.nc1 == pytest.approx(first.nc1, rel=1e-4)


def test_classes_with_one_row_are_skipped_and_counted():
    h, y = clusters(0, classes=3, per_class=5)
    y = np.concatenate([y, [10, 11]])
    h = np.concatenate([h, np.zeros((2, h.shape[1]))])
    got = class_geometry(torch.tensor(h), y)
    assert got.classes == 3 and got.skipped_classes == 2 and got.status == "ok"
    assert got.nc1 == pytest.approx(class_geometry(torch.tensor(h[:-2]), y[:-2]).nc1)


@pytest.mark.parametrize("labels, status", [([0] * 6, "few_classes"), ([0, 1, 2, 3, 4, 5], "few_classes")])
def test_fewer_than_two_classes_say_so(labels, status):
    got = class_geometry(torch.randn(6, 3), labels)
    assert got.status == status and all(math.isnan(getattr(got, n)) for n in STATISTICS)


def test_nonfinite_features_say_so():
    h = torch.randn(8, 3)
    h[2, 1] = math.inf
    got = class_geometry(h, [0, 0, 0, 0, 1, 1, 1, 1])
    assert got.status == "nonfinite" and math.isnan(got.nc1)


def test_coinciding_class_means_say_zero():
    h = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    got = class_geometry(h, [0, 0, 1, 1])
    assert got.status == "zero" and math.isnan(got.nc1) and got.ncc_accuracy == 0.5


def test_labels_must_be_integers():
    with pytest.raises(ValueError, match="labels must be 1-D integer class indices"):
        plan_classes(np.array([0.5, 1.0]))


def test_example_matrix_pools_tokens_and_positions():
    sequence = torch.randn(3, 5, 4)
    assert torch.allclose(example_matrix(sequence), sequence.mean(1))
    image = torch.randn(3, 4, 2, 2)
    assert torch.allclose(example_matrix(image, channels_first=True), image.mean((2, 3)))
    assert example_matrix(torch.randn(6), index=torch.tensor([1, 4])).shape == (2, 1)


def test_power_iteration_axes_match_the_eigenvectors():
    """The accelerator route (power iteration, all classes at once) against the host's eigh."""
    from ndtracker.spectra.classes import _per_class, _principal_axes

    h, y = clusters(4)
    x = torch.tensor(h - h.mean(0))
    segment = torch.tensor(y)
    members = torch.nn.functional.one_hot(segment, 4).T.double()
    residuals = x - (members @ x / members.sum(1, keepdim=True))[segment]
    exact = _per_class(residuals, np.bincount(y), exact=True)[1]
    iterated = _principal_axes(residuals, segment, members)
    assert (exact * iterated).sum(1).abs().numpy() == pytest.approx(np.ones(4), abs=1e-8)
