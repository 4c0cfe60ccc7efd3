"""probe=: a fixed batch measured in eval mode without autograd, on the state of the step's weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker, spectra
from ndtracker.tracking import Probe
from training_helpers import hook_count


def net(seed=0) -> nn.Sequential:
    """Dropout and batch norm: a forward in training mode differs from one in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))


def oracle_activations(model, names, *args, **kwargs) -> dict[str, list[float]]:
    """Metrics of each named layer's centred output for one eval, no-grad forward of a copy."""
    twin = copy.deepcopy(model).eval()
    outputs: dict[str, torch.Tensor] = {}
    for name in names:
        twin.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs.setdefault(name, out))
    with torch.no_grad():
        twin(*args, **kwargs)
    result = {}
    for name, out in outputs.items():
        centred = out.double() - out.double().mean(0)
        result[name] = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(centred) ** 2)[:2].tolist()
    return result


def test_probe_rows_equal_an_oracle_on_the_probe_on_the_step_s_weights(tmp_path):
    model = net()
    probe = torch.randn(40, 12, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    expected = {}
    metrics = ("stable_rank", "participation_ratio")
    with Tracker(model, every=2, probe=probe, log_dir=str(tmp_path), detect=False, metrics=metrics) as tracker:
        for t in range(6):
            expected[t] = oracle_activations(model, tracker.layers, probe)  # the state before update t
            model(torch.randn(8, 12)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
    df = ndtracker.load(tmp_path)
    act = df[df.space == "activation"]
    assert sorted(act.step.unique()) == [0, 2, 4] and (act.rows == 40).all()
    assert set(act.source) == {"probe"} and df[df.space == "weight"].source.isna().all()
    for row in act.itertuples():
        got = [row.stable_rank, row.participation_ratio]
        assert got == pytest.approx(expected[row.step][row.layer], rel=1e-4), (row.step, row.layer)


def test_training_flags_are_restored_exactly_and_no_gradient_is_made(tmp_path):
    model = net()
    model[2].eval()  # a mixed state the probe must give back as it was
    flags = [m.training for m in model.modules()]
    running_mean = model[4].running_mean.clone()
    grad_mode = []
    model[0].register_forward_hook(lambda *args: grad_mode.append(torch.is_grad_enabled()))
    with Tracker(model, every=1, probe=torch.randn(16, 12), log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(3):
            tracker.step()  # no training at all: only the probe runs
            assert [m.training for m in model.modules()] == flags
    assert grad_mode and not any(grad_mode)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[4].running_mean, running_mean)  # eval mode: batch norm statistics untouched
    assert hook_count(model) == 1  # only the test's own hook is left
    df = ndtracker.load(tmp_path)
    assert sorted(df.step.unique()) == [0, 1, 2] and (df.status == "ok").all()


def test_training_forwards_are_never_hooked_with_a_probe(tmp_path):
    model = net()
    seen = []
    with Tracker(model, every=1, probe=torch.randn(16, 12), log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(3):
            seen.append(hook_count(model))
            model(torch.randn(8, 12)).sum().backward()
            tracker.step()
    assert seen == [0, 0, 0]
    assert set(ndtracker.load(tmp_path).query("space == 'activation'").source) == {"probe"}


def test_without_a_probe_activation_rows_come_from_training(tmp_path):
    model = net()
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        model(torch.randn(8, 12)).sum().backward()
        tracker.step()
    df = ndtracker.load(tmp_path)
    assert set(df[df.space == "activation"].source) == {"train"}


class DictModel(nn.Module):
    """Keyword inputs, as a Hugging Face model takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        return {"logits": self.proj(hidden)}


@pytest.mark.parametrize("form", ["dict", "Probe"])
def test_dict_input_model(tmp_path, form):
    torch.manual_seed(0)
    model = DictModel()
    ids = torch.randint(0, 50, (6, 9))
    mask = torch.ones(6, 9)
    probe = {"input_ids": ids, "attention_mask": mask} if form == "dict" else Probe((ids,), {"attention_mask": mask})
    with Tracker(model, every=1, probe=probe, log_dir=str(tmp_path), detect=False) as tracker:
        model(input_ids=torch.randint(0, 50, (2, 3)))["logits"].sum().backward()
        tracker.step()
    row = ndtracker.load(tmp_path).query("space == 'activation' and layer == 'proj'").iloc[0]
    assert (row.rows, row.cols, row.source) == (6 * 9, 16, "probe")
    with torch.no_grad():
        out = model.proj(model.embed(ids)).reshape(-1, 16).double()
    centred = out - out.mean(0)
    expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(centred) ** 2)[0].item()
    assert row.stable_rank == pytest.approx(expected, rel=1e-4)


def test_several_positional_inputs_go_through_probe_args(tmp_path):
    model = TwoInputs()
    x1, x2 = torch.randn(10, 4), torch.randn(10, 4)
    for probe in (Probe(args=(x1, x2)), ((x1, x2), torch.arange(10) % 2)):
        with Tracker(model, every=1, probe=probe, log_dir=str(tmp_path), detect=False) as tracker:
            tracker.step()
    frame = ndtracker.load(tmp_path, run_id="all")
    assert (frame.query("space == 'activation'").rows == 10).all() and frame.run_id.nunique() == 2


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, a, b):
        return self.fc(a + b)


def test_probe_follows_the_model_s_dtype(tmp_path):
    model = net().double()
    with Tracker(model, every=1, probe=torch.randn(10, 12), log_dir=str(tmp_path), detect=False) as tracker:
        tracker.step()
    assert (ndtracker.load(tmp_path).status == "ok").all()


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize(
    "model, kwargs, match",
    [
        (net, dict(probe=(torch.randn(8, 12), torch.randn(8, 12))),
         r"probe=\(tensor\(float32, shape=\(8, 12\)\), tensor\(float32, shape=\(8, 12\)\)\): the labels must be one "
         r"integer class index per example of the probe batch \(8 examples\), got a float32 of shape \(8, 12\); "
         r"to pass several positional inputs, use probe=ndtracker.Probe\(args=\(x1, x2\)\)"),
        (net, dict(probe=(torch.randn(8, 12), torch.arange(6))), r"\(8 examples\), got 6 labels"),
        (net, dict(probe=(torch.randn(8, 12), torch.arange(8) - 1)), r"got a negative label \(-1\)"),
        (net, dict(probe=[torch.randn(8, 12), [0.5] * 8]), r"probe=\[tensor.*got a float64 of shape \(8,\)"),
        (net, dict(probe=Probe(args=(torch.randn(8, 12),), labels=torch.ones(8, 2, dtype=torch.long))),
         r"probe=Probe\(...\): the labels .* got a int64 of shape \(8, 2\)"),
        (net, dict(probe=(torch.randn(8, 12),)), r"probe=\(tensor\(float32, shape=\(8, 12\)\)\) is a tuple of 1 item; a "
         r"tuple is read as \(inputs, labels\), .*Probe\(args=\(x1, x2\)\)"),
        (net, dict(probe=(torch.randn(8, 12),) * 3), r"is a tuple of 3 items; a tuple is read as \(inputs, labels\)"),
        (net, dict(probe=(torch.randn(8, 12), None)), r"the labels of \(inputs, labels\) are None"),
        (net, dict(probe=torch.randn(8, 5)), "probe: the model cannot take the probe"),
        (net, dict(probe="text"), "probe must be a tensor, a dict of keyword inputs, an \\(inputs, labels\\) pair or a "
         "Probe, got a str"),
        (net, dict(probe={"x": 3}), "probe holds no tensor"),
        (net, dict(probe=torch.randn(8, 12), spaces="weight"), "probe measures activations"),
        (Unused, dict(probe=torch.randn(8, 4), layers="spare"), r"reached none of the tracked layers \['spare'\]"),
        (net, dict(probe=torch.randn(8, 12), linear_probes=True), r"linear_probes=True with probe= needs the probe's "
         r"labels: pass probe=\(inputs, labels\)"),
        (net, dict(probe=torch.randn(1, 12)), r"a single activation row once centred.*\{'0': \(1, 32\), .*at least 2 samples"),
    ],
)
@pytest.mark.parametrize("hooks", ["sampled", "permanent"])
def test_a_bad_probe_raises_at_construction_and_leaves_no_hook(tmp_path, model, kwargs, match, hooks):
    module = model()
    with pytest.raises(ValueError, match=match):
        Tracker(module, log_dir=str(tmp_path / "run"), hooks=hooks, **kwargs)
    assert hook_count(module) == 0
    assert not (tmp_path / "run").exists()


def test_run_json_records_the_probe_s_shapes(tmp_path):
    model = net()
    with Tracker(model, every=1, probe=torch.randn(10, 12), log_dir=str(tmp_path), detect=False):
        pass
    options = ndtracker.store.read_run_info(tmp_path)[-1]["options"]
    assert options["probe"] == {"args": [[10, 12]], "kwargs": {}}


class FailsOnTheThirdProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.probes = nn.Linear(4, 4), 0

    def forward(self, x):
        if not self.training:
            self.probes += 1
            if self.probes == 3:
                raise RuntimeError("probe went wrong")
        return self.fc(x)


def test_a_probe_that_fails_later_is_warned_about_once_and_training_goes_on(tmp_path):
    model = FailsOnTheThirdProbe()  # probe 1: the check at construction, 2: step 0, 3: step 1
    with pytest.warns(RuntimeWarning, match=r"the probe's forward failed: RuntimeError\('probe went wrong'\)"):
        with Tracker(model, every=1, probe=torch.randn(6, 4), log_dir=str(tmp_path), detect=False) as tracker:
            for _ in range(3):
                model(torch.randn(2, 4)).sum().backward()
                tracker.step()
    assert model.training
    df = ndtracker.load(tmp_path)
    assert sorted(df[df.space == "activation"].step) == [0, 2]
    assert sorted(df[df.space == "weight"].step) == [0, 1, 2]
