"""One step, one parameter state: a step's weight row holds the weights its forward used."""

from __future__ import annotations

import pytest
import torch

import ndtracker
from ndtracker import Tracker, spectra
from ndtracker.vocabulary import METRICS
from training_helpers import hook_count, mlp


def oracle(weight: torch.Tensor) -> list[float]:
    """The four metrics of a weight matrix by a float64 SVD."""
    return spectra.metrics_from_eigenvalues(torch.linalg.svdvals(weight.double()) ** 2).tolist()


def weights_of(model, names) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach().clone() for name in names}


def run(tmp_path, every, steps, hooks="sampled", micro_batches=1, eval_pass=False):
    """Train with large updates; return the logged frame and the weights as each step began."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(3)
    before: dict[int, dict[str, torch.Tensor]] = {}
    with Tracker(model, every=every, log_dir=str(tmp_path), metrics=METRICS, hooks=hooks, detect=False) as tracker:
        for t in range(steps):
            before[t] = weights_of(model, tracker.layers)
            if eval_pass:
                model.eval()
                with torch.no_grad():
                    model(torch.randn(5, 12, generator=g))
                model.train()
            for _ in range(micro_batches):
                x = torch.randn(16, 12, generator=g)
                (model(x) - 1).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():  # and a multiplicative jolt, so each update changes the spectra a lot
                for p in model.parameters():
                    p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
            tracker.step()
        after_last = weights_of(model, tracker.layers)
    assert hook_count(model) == 0
    return ndtracker.load(tmp_path), before, after_last


@pytest.mark.parametrize(
    "every, hooks, micro_batches, eval_pass",
    [(1, "sampled", 1, False), (3, "sampled", 2, True), (2, "permanent", 1, True), ([(0, 1), (3, 2)], "sampled", 2, False)],
)
def test_weight_row_of_step_t_is_the_weights_before_update_t(tmp_path, every, hooks, micro_batches, eval_pass):
    df, before, _ = run(tmp_path, every, 8, hooks, micro_batches, eval_pass)
    weights = df[df.space == "weight"]
    assert len(weights) and set(weights.step) == set(df[df.space == "activation"].step)
    for row in weights.itertuples():
        expected = oracle(before[row.step][row.layer])
        got = [getattr(row, m) for m in METRICS]
        assert got == pytest.approx(expected, rel=1e-6), (row.step, row.layer)
        if row.step + 1 in before:  # the state after the update differs: the test can tell them apart
            after = oracle(before[row.step + 1][row.layer])
            assert abs(after[0] - expected[0]) > 1e-3 * expected[0]


def test_step_0_holds_the_initial_weights(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    initial = weights_of(model, ["0", "2", "4"])
    df, _, _ = run(tmp_path, 5, 3)  # run() builds the same seeded mlp()
    first = df[(df.space == "weight") & (df.step == 0)].set_index("layer")
    for name, weight in initial.items():
        assert first.loc[name].stable_rank == pytest.approx(oracle(weight)[0], rel=1e-6)


def test_activation_and_weight_rows_of_a_step_describe_one_state(tmp_path):
    """With lr=0 nothing changes: both rows of every step match the one set of weights."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(5):
            model(torch.randn(8, 12)).sum().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
    weights = ndtracker.load(tmp_path).query("space == 'weight'")
    assert sorted(weights.step.unique()) == [0, 2, 4]
    assert weights.groupby("layer").stable_rank.nunique().eq(1).all()


def test_the_weights_of_a_step_begun_but_never_ended_are_not_logged(tmp_path):
    df, _, _ = run(tmp_path, 2, 4)  # step 4 began (its weights were measured) but never ended
    assert sorted(df.step.unique()) == [0, 2]
