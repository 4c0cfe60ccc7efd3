"""Labels and condensation through the Tracker: the classes table and the weight-row columns."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker
from ndtracker.spectra.classes import class_geometry
from ndtracker.spectra.condensation import condensation
from training_helpers import mlp


def run(model, batches, log_dir, **options):
    """One optimizer step per (x, labels) batch under a Tracker sampling every step."""
    options.setdefault("detect", False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with Tracker(model, every=1, log_dir=str(log_dir), **options) as tracker:
        for x, labels in batches:
            model(x).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=0.5, labels=labels)
    return tracker


def test_labels_write_a_loadable_classes_table_matching_the_direct_computation(tmp_path):
    model = mlp(widths=(12, 32, 16, 3))
    x, y = torch.randn(40, 12), torch.arange(40) % 4
    outputs = {}
    handle = model[2].register_forward_hook(lambda m, i, o: outputs.setdefault("2", o.detach().clone()))
    run(model, [(x, y)], tmp_path)
    handle.remove()
    table = ndtracker.load(tmp_path, table="classes")
    assert list(table["layer"]) == ["0", "2", "4"] and set(table["status"]) == {"ok"}
    assert list(table.columns[:4]) == ["run_id", "step", "layer", "space"]
    assert (table["classes"] == 4).all() and (table["skipped_classes"] == 0).all() and (table["rows"] == 40).all()
    want = class_geometry(outputs["2"].double(), y)
    got = table.set_index("layer").loc["2"]
    for name in ("nc1", "radius", "dimension", "center_alignment", "ncc_accuracy"):
        assert got[name] == pytest.approx(getattr(want, name), rel=1e-4), name


def test_subsampled_rows_keep_their_labels(tmp_path):
    """Features that encode the label: only consistently subsampled labels give NCC accuracy 1."""
    layer = nn.Linear(5, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(5)), layer.bias.zero_()
    y = torch.arange(64) % 5
    x = 10 * nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(64, 5)
    run(layer, [(x, y)] * 3, tmp_path, max_rows=20)
    table = ndtracker.load(tmp_path, table="classes")
    assert (table["rows"] == 20).all() and (table["ncc_accuracy"] == 1.0).all() and (table["nc1"] < 1e-3).all()
    metrics = ndtracker.load(tmp_path)
    assert (metrics.loc[metrics.space == "activation", "rows"] == 20).all()


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_outputs_are_pooled_from_the_sample_after_the_first_labels(tmp_path):
    torch.manual_seed(0)
    batches = [(torch.randn(12, 3, 4, 4), torch.arange(12) % 3) for _ in range(3)]
    run(ConvNet(), batches, tmp_path)
    table = ndtracker.load(tmp_path, table="classes")
    by_step = table.groupby("step")["layer"].apply(list).to_dict()
    assert by_step == {0: ["fc"], 1: ["conv", "fc"], 2: ["conv", "fc"]}
    assert (table["rows"] == 12).all() and set(table["status"]) == {"ok"}


def test_sequence_outputs_are_pooled_over_tokens(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    batches = [(torch.randn(6, 5, 4), torch.tensor([0, 0, 1, 1, 2, 2]))] * 2
    run(model, batches, tmp_path)
    table = ndtracker.load(tmp_path, table="classes")
    assert list(table["step"]) == [1, 1] and (table["rows"] == 6).all()


def test_labels_of_the_wrong_length_log_a_mismatch_and_warn_once(tmp_path):
    with pytest.warns(RuntimeWarning, match="5 labels for 8 examples") as caught:
        run(mlp(), [(torch.randn(8, 12), torch.arange(5))] * 2, tmp_path, layers="0")
    assert sum("labels for" in str(w.message) for w in caught) == 1
    table = ndtracker.load(tmp_path, table="classes")
    assert set(table["status"]) == {"mismatch"} and table["classes"].isna().all() and table["nc1"].isna().all()


def test_unusable_labels_warn_and_the_spectra_are_still_logged(tmp_path):
    with pytest.warns(RuntimeWarning, match="labels must be integer class indices"):
        run(mlp(), [(torch.randn(8, 12), torch.rand(8))], tmp_path)
    assert len(ndtracker.load(tmp_path, table="classes")) == 0
    assert set(ndtracker.load(tmp_path)["status"]) == {"ok"}


def test_without_labels_the_classes_table_is_empty_with_its_columns(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(mlp(), [(torch.randn(8, 12), None)] * 2, tmp_path)
    table = ndtracker.load(tmp_path, table="classes")
    assert len(table) == 0 and "nc1" in table.columns and str(table["classes"].dtype) == "Int64"


def test_condensation_fills_the_weight_rows_only_when_asked(tmp_path):
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]).repeat(6, 1) * torch.arange(1.0, 7.0)[:, None])
        model[0].bias.copy_(torch.arange(1.0, 7.0) * 0.5)
    batches = [(torch.randn(8, 3), None)]
    want = condensation(model[2].weight.detach().clone(), model[2].bias.detach().clone())  # step 0's weights
    run(model, batches, tmp_path / "on", condensation=True, spaces="weight")
    frame = ndtracker.load(tmp_path / "on").set_index("layer")
    assert frame.loc["0", "condensation"] == pytest.approx(1.0) and frame.loc["0", "directions"] == pytest.approx(1.0, rel=1e-4)
    assert (frame.loc["2", "condensation"], frame.loc["2", "directions"]) == pytest.approx(want, rel=1e-6)
    run(model, batches, tmp_path / "off")
    assert ndtracker.load(tmp_path / "off")[["condensation", "directions"]].isna().all().all()
    options = ndtracker.store.read_run_info(tmp_path / "on")[0]["options"]
    assert options["condensation"] is True


def test_activation_rows_never_carry_condensation(tmp_path):
    run(mlp(), [(torch.randn(8, 12), None)], tmp_path, condensation=True)
    frame = ndtracker.load(tmp_path)
    assert frame.loc[frame.space == "activation", "condensation"].isna().all()
    assert frame.loc[frame.space == "weight", "condensation"].notna().all()


def test_labels_off_sampled_steps_cost_nothing(tmp_path, monkeypatch):
    from ndtracker.tracking import geometry

    calls = []
    monkeypatch.setattr(geometry, "host_labels", lambda labels, warn: calls.append(1))
    model = mlp()
    with Tracker(model, every=3, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(6):
            model(torch.randn(4, 12))
            tracker.step(labels=torch.arange(4))
    assert len(calls) == 2


def test_labels_feed_the_class_geometry_and_the_probes_on_the_same_examples(tmp_path):
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    x = torch.randn(40, 12) + 3.0 * nn.functional.one_hot(labels, 12).float()
    batches = [(x, labels)] * 3
    run(mlp(), batches, tmp_path, similarity=True, linear_probes=True, max_rows=24, gradients=True)
    classes = ndtracker.load(tmp_path, table="classes")
    assert len(classes) and set(classes["status"]) == {"ok"}
    assert set(classes.loc[classes["step"] > 0, "rows"]) == {24}  # the activations' subsample, labels alike
    frame = ndtracker.load(tmp_path)
    activations = frame[(frame["space"] == "activation") & (frame["step"] > 0)]
    assert activations["probe_accuracy"].notna().all()
    similarity = ndtracker.load(tmp_path, table="similarity")
    assert len(similarity) and set(similarity["status"]) == {"ok"}
