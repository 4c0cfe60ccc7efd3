"""The report's tunnel, correlation and CKA tables against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ndtracker.reports.science import TUNNEL_COLUMNS, cka_at, correlations, nearest_step, tunnel_formed, tunnel_table
from synthetic_runs import series


def _depth_run(profiles: list[list[float]], space: str = "activation"):
    """One series per layer from per-step depth profiles (rows: steps, columns: layers)."""
    grid = np.array(profiles, float)
    return [series(f"l{k}", grid[:, k], space) for k in range(grid.shape[1])]


PROFILES = [
    [10, 11, 12, 11, 10],  # no tunnel
    [10, 11, 12, 11, 3],  # only the last layer is low: not a tunnel
    [10, 11, 12, 4, 3],  # onset 3
    [10, 11, 2, 2, 1],  # onset 2
    [10, 11, 2, 1.5, 1],
]


def test_tunnel_onset_per_step_and_when_it_formed():
    tunnel = tunnel_table(_depth_run(PROFILES), "stable_rank")
    assert list(tunnel.columns) == TUNNEL_COLUMNS
    assert tunnel.step.tolist() == [0, 5, 10, 15, 20]
    assert tunnel.onset_index.tolist() == [pd.NA, pd.NA, 3, 2, 2]
    assert tunnel.onset_layer.tolist() == [None, None, "l3", "l2", "l2"]
    assert tunnel_formed(tunnel) == 10  # onsets 3, 2, 2: within one layer of the final one
    assert tunnel_formed(tunnel, "weight") is None


def test_probe_saturation_is_read_per_step_over_depth():
    probes = pd.DataFrame({
        "step": [0] * 5 + [5] * 5, "layer": [f"l{k}" for k in range(5)] * 2, "space": "activation",
        "probe_accuracy": [0.2, 0.5, 0.8, 0.8, 0.79, 0.3, 0.6, 0.7, 0.9, 0.95],
    })  # fmt: skip
    tunnel = tunnel_table(_depth_run(PROFILES[:2]), "stable_rank", probes)
    assert tunnel.probe_saturation_index.tolist() == [2, 4]
    assert tunnel.probe_saturation_layer.tolist() == ["l2", "l4"]


def test_correlations_equal_numpy_and_rank_oracles():
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 3, 40)) + 0.01 * rng.random(40)
    values = 10 - 3 * loss + 0.05 * rng.standard_normal(40)
    run = [series("a", values, loss=loss), series("a", values[::-1], "weight", loss=loss)]
    grads = pd.DataFrame({"step": run[0].steps, "layer": "a", "grad_norm": np.exp(values)})
    table = correlations(run, "stable_rank", grads).set_index("space")
    act = table.loc["activation"]
    assert act.samples == 40 and act.pearson_loss == pytest.approx(np.corrcoef(values, loss)[0, 1])
    ranks = pd.Series(values).rank(), pd.Series(loss).rank()
    assert act.spearman_loss == pytest.approx(np.corrcoef(*ranks)[0, 1])
    assert act.spearman_grad_norm == pytest.approx(1.0)  # a monotone map of the metric
    assert act.pearson_grad_norm == pytest.approx(np.corrcoef(values, np.exp(values))[0, 1])
    assert table.loc["weight"].grad_samples == 40


def test_correlations_need_three_finite_pairs_and_variation():
    loss = np.array([1.0, np.nan, 0.5, np.nan])
    table = correlations([series("a", np.arange(4.0), loss=loss), series("b", np.ones(4), loss=np.arange(4.0))],
                         "stable_rank")  # fmt: skip
    assert table.samples.tolist() == [2, 4]
    assert table.spearman_loss.isna().all() and table.pearson_grad_norm.isna().all()
    assert table.grad_samples.tolist() == [0, 0]


def test_cka_matrix_from_the_pair_table_is_symmetric():
    similarity = pd.DataFrame({
        "step": [0, 0, 0, 5], "layer_a": ["a", "a", "b", "a"], "layer_b": ["a", "b", "b", "b"],
        "cka": [1.0, 0.3, 1.0, 0.9],
    })  # fmt: skip
    matrix = cka_at(similarity, 0, ["a", "b", "c"])
    assert np.array_equal(matrix[:2, :2], [[1.0, 0.3], [0.3, 1.0]]) and np.isnan(matrix[2]).all()
    assert np.array_equal(matrix, matrix.T, equal_nan=True)
    assert nearest_step([0, 5, 10], 7) == 5 and nearest_step([0, 10], 5) == 0
