"""Tracker: the three lines, sampling semantics, layer selection, logged values, bad input, leaks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import spectra
from ndtracker.vocabulary import METRICS
from ndtracker import Tracker
from training_helpers import mlp


def train(model, tracker, steps, batch=32, hook=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(batch, 12, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if hook:
            hook(tracker.current_step)
        tracker.step(loss=loss)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_three_lines_log_every_fifth_step(tmp_path):
    model = mlp()
    tracker = ndtracker.Tracker(model, every=5, log_dir=str(tmp_path))
    train(model, tracker, 23)
    tracker.close()
    df = ndtracker.load(tmp_path)
    assert sorted(df.step.unique()) == [0, 5, 10, 15, 20]
    assert set(df.layer) == {"0", "2", "4"} and set(df.space) == {"activation", "weight"}
    assert len(df) == 5 * 3 * 2
    assert (df.status == "ok").all()
    assert df.effective_rank.isna().all() and df.energy90.isna().all()  # not in the default set
    assert df.loss.notna().all() and (df.rows[df.space == "activation"] == 32).all()


def test_hooks_only_on_sampled_steps_and_none_after_close(tmp_path):
    model = mlp()
    seen = {}
    tracker = Tracker(model, every=3, log_dir=str(tmp_path), detect=False)
    train(model, tracker, 7, hook=lambda step: seen.setdefault(step, hook_count(model)))
    assert [step for step, n in seen.items() if n] == [0, 3, 6]
    tracker.close()
    tracker.close()  # idempotent
    assert hook_count(model) == 0


def test_eval_forwards_never_replace_or_add_samples(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
        for step in range(4):
            model.eval()
            with torch.no_grad():
                model(torch.randn(7, 12))  # an eval pass first: must be ignored
            model.train()
            model(torch.randn(32, 12)).sum().backward()
            model(torch.randn(9, 12))  # a second training forward: not the first, ignored
            opt.step()
            opt.zero_grad()
            tracker.step()
    df = ndtracker.load(tmp_path)
    act = df[df.space == "activation"]
    assert sorted(act.step.unique()) == [0, 2]
    assert (act.rows == 32).all()
    assert df.loss.isna().all()


def test_gradient_accumulation_captures_the_first_micro_batch(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(3):
            for size in (24, 8, 8, 8):
                model(torch.randn(size, 12)).sum().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
    act = ndtracker.load(tmp_path).query("space == 'activation'")
    assert len(act) == 3 * 3 and (act.rows == 24).all()


def test_sampled_step_without_training_forward_logs_weights_and_warns(tmp_path):
    model = mlp()
    with pytest.warns(RuntimeWarning, match="no training forward pass") as caught:
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            tracker.step()
    assert caught[0].filename == __file__  # the warning points at the user's line
    df = ndtracker.load(tmp_path)
    assert set(df.space) == {"weight"}


def test_logged_values_match_an_svd_of_what_the_layer_saw(tmp_path):
    model = mlp()
    captured = {}
    model[2].register_forward_hook(lambda m, a, out: captured.setdefault("out", out.detach().clone()))
    metrics = METRICS
    with Tracker(model, every=5, log_dir=str(tmp_path), metrics=metrics, detect=False) as tracker:
        x = torch.randn(64, 12)
        model(x).sum().backward()
        tracker.step()
        weight_after = model[0].weight.detach().clone()
    df = ndtracker.load(tmp_path).set_index(["layer", "space"])
    act = captured["out"] - captured["out"].mean(0)
    expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(act.double()) ** 2)
    row = df.loc[("2", "activation")]
    got = [row[m] for m in metrics]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), expected, rtol=1e-4, atol=0)
    w_expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(weight_after.double()) ** 2)
    w_row = df.loc[("0", "weight")]
    assert w_row.stable_rank == pytest.approx(w_expected[0].item(), rel=1e-4)
    assert w_row.energy90 == int(w_expected[3])


def test_start_step_continues_the_step_axis_with_a_new_run_id(tmp_path):
    model = mlp()
    with Tracker(model, every=5, log_dir=str(tmp_path)) as first:
        train(model, first, 10)
    with Tracker(model, every=5, log_dir=str(tmp_path), start_step=10) as second:
        train(model, second, 10)
    assert first.run_id != second.run_id
    df = ndtracker.load(tmp_path)
    assert sorted(df[df.run_id == second.run_id].step.unique()) == [10, 15]
    assert sorted(df[df.run_id == first.run_id].step.unique()) == [0, 5]


def test_exception_in_the_loop_propagates_unchanged_and_cleans_up(tmp_path):
    model = mlp()
    with pytest.raises(KeyError, match="user bug"):
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            train(model, tracker, 3)
            raise KeyError("user bug")
    assert hook_count(model) == 0
    assert sorted(ndtracker.load(tmp_path).step.unique()) == [0, 1, 2]


def test_rnn_tuple_outputs_and_dict_outputs(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 10, batch_first=True)
            self.head = nn.Linear(10, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return {"logits": self.head(out[:, -1])}

    model = Net()
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        model(torch.randn(4, 5, 6))["logits"].sum().backward()
        tracker.step()
    df = ndtracker.load(tmp_path).set_index(["layer", "space"])
    assert df.loc[("lstm", "activation")].rows == 20
    assert df.loc[("lstm", "weight")].cols == 10


def test_nonfinite_activations_give_nan_status_and_one_warning(tmp_path):
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            for _ in range(3):
                model(torch.full((8, 12), math.nan))
                tracker.step()
    df = ndtracker.load(tmp_path)
    act = df[df.space == "activation"]
    assert (act.status == "nonfinite").all() and act.stable_rank.isna().all()
    messages = [str(w.message) for w in caught if "nonfinite" in str(w.message)]
    assert len(messages) == 3  # once per layer, not once per step


def test_metrics_option_selects_columns(tmp_path):
    model = mlp()
    with Tracker(model, every=1, metrics=["effective_rank"], log_dir=str(tmp_path), detect=False) as t:
        model(torch.randn(16, 12))
        t.step()
    df = ndtracker.load(tmp_path)
    assert df.effective_rank.notna().all() and df.stable_rank.isna().all()
    assert set(df.estimator) == {"exact"}


@pytest.mark.filterwarnings("ignore:.*no training forward pass")
def test_loss_tensor_is_read_only_on_sampled_steps(tmp_path, monkeypatch):
    model = mlp()
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    with Tracker(model, every=4, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(8):
            tracker.step(loss=torch.tensor(1.5))
    assert len(calls) == 2


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(every=0), ValueError, "every must be a positive integer, got 0"),
        (dict(every=2.5), ValueError, "every must be a positive integer, got 2.5"),
        (dict(every=True), ValueError, "every must be a positive integer, got True"),
        (dict(layers="nope*"), ValueError, "layers entry 'nope\\*' matched no module of Sequential"),
        (dict(layers=nn.LSTM), ValueError, "layers entry 'LSTM' matched no module"),
        (dict(layers=[]), ValueError, "layers must name at least one module"),
        (dict(metrics=["rank"]), ValueError, "metrics must be a non-empty selection"),
        (dict(spaces="gradient"), ValueError, "spaces must be 'activation', 'weight', or both as"),
        (dict(spaces="both"), ValueError, r"or both as \('activation', 'weight'\), got 'both'"),
        (dict(spaces=3), ValueError, "spaces must be .*, got 3"),
        (dict(center="False"), TypeError, "center must be True or False, got 'False'"),
        (dict(track_eval=1), TypeError, "track_eval must be True or False, got 1"),
        (dict(detect="no"), TypeError, "detect must be True or False, got 'no'"),
        (dict(max_rows=1), ValueError, "max_rows must be at least 2 or None"),
        (dict(max_layers=0), ValueError, "max_layers must be a positive integer or None, got 0"),
        (dict(layers=0), TypeError, "layers must be a name, a glob pattern, a module type, a module or a list of them, got 0"),
        (dict(log_dir=123), TypeError, r"log_dir must be a path \(a str or os.PathLike\) or None, got 123"),
        (dict(estimator="svd"), ValueError, "estimator must be one of"),
        (dict(estimator="randomized", metrics=["energy90"]), ValueError, "use estimator='auto'"),
        (dict(conv="pixel"), ValueError, "conv must be one of"),
        (dict(max_rows=0), ValueError, "max_rows must be a positive integer"),
        (dict(weight_every=7), ValueError, "weight_every must be a multiple of every=5"),
        (dict(flush_secs=0), ValueError, "flush_secs must be a positive number"),
        (dict(start_step=-1), ValueError, "start_step must be a non-negative integer"),
        (dict(hooks="always"), ValueError, "hooks must be one of auto, sampled, permanent; got 'always'"),
        (dict(max_buffer_rows=0), ValueError, "max_buffer_rows must be a positive integer, got 0"),
        (dict(colour="red"), TypeError, "colour"),
    ],
)
def test_bad_configuration_raises_at_construction(tmp_path, kwargs, error, match):
    model = mlp()
    with pytest.raises(error, match=match):
        Tracker(model, **{"log_dir": str(tmp_path), **kwargs})
    assert hook_count(model) == 0


def test_bad_model_and_log_dir(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        Tracker("model", log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no trackable layer in Sequential"):
        Tracker(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), log_dir=str(tmp_path))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        Tracker(mlp(), log_dir=str(a_file))




def test_measurements_run_in_full_float32_precision_and_restore_the_setting(tmp_path, monkeypatch):
    seen: list[str] = []
    measure_many = spectra.measure_many
    monkeypatch.setattr(
        spectra, "measure_many", lambda jobs: seen.append(torch.get_float32_matmul_precision()) or measure_many(jobs)
    )
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bfloat16 passes on CPU
    try:
        model = mlp()
        with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
            train(model, tracker, 4)
        # weights when each sampled step begins (at construction, ends of steps 1 and 3), activations
        # when it ends (steps 0 and 2): the weight timing of issue 10 made this 2 calls -> 5
        assert seen == ["highest"] * 5
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_series_detectors_recompute_on_staggered_strides():
    from ndtracker.tracking.events import BASE_STRIDE, SeriesDetectors

    made: list[int] = []

    class Recording:
        def __init__(self, *, stride: int) -> None:
            made.append(stride)

        def update(self, value: float) -> list:
            return []

    detectors = SeriesDetectors(Recording, warn=lambda *args: None)
    rows = [{"layer": name, "space": space, "step": 0, "stable_rank": 1.0}
            for name in "abc" for space in ("activation", "weight")]  # fmt: skip
    assert detectors.feed(rows) == []
    assert made[0] == BASE_STRIDE and len(set(made)) == len(rows)


def test_step_after_close_warns_once_and_logs_nothing(tmp_path):
    model = mlp()
    tracker = Tracker(model, every=1, log_dir=str(tmp_path), detect=False)
    model(torch.randn(4, 12)).sum().backward()
    tracker.step()
    tracker.close()
    with pytest.warns(RuntimeWarning, match=r"step\(\) after close\(\) measures and logs nothing"):
        tracker.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(4, 12)).sum().backward()
        tracker.step()
    assert sorted(ndtracker.load(tmp_path).step.unique()) == [0]


def test_a_loss_that_is_not_one_number_is_logged_null_with_one_warning(tmp_path):
    model = mlp()
    with pytest.warns(RuntimeWarning, match=r"loss has shape \(32,\), not one number: .* pass a scalar such as loss.mean\(\)"):
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            for loss in ("per example", "per example", 10**400):
                per_example = model(torch.randn(32, 12)).pow(2).mean(1)
                tracker.step(loss=per_example if loss == "per example" else loss)
    frame = ndtracker.load(tmp_path)
    assert frame["loss"].isna().all() and len(frame) == 3 * 3 * 2
