"""A labelled probe batch: linear probes and class geometry on the probe, against direct computations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from class_oracle import class_statistics

import ndtracker
from ndtracker import Tracker
from ndtracker.spectra.probes import RIDGE, split
from ndtracker.spectra.similarity import cka_matrix
from ndtracker.tracking import geometry
from ndtracker.tracking.probe import as_probe
from training_helpers import hook_count

CLASSES = 4


def net(seed=0) -> nn.Sequential:
    """Dropout and batch norm: a forward in training mode differs from one in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))


def labelled(rows=48, seed=5) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose class shows in a few features: probes and class statistics are far from trivial."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(rows) % CLASSES
    x = torch.randn(rows, 12, generator=generator) + 1.5 * nn.functional.one_hot(y, 12).float()
    return x, y


def eval_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each named layer's output on ``x`` in an eval-mode, no-grad forward of a copy (float64)."""
    twin = copy.deepcopy(model).eval()
    outputs: dict[str, torch.Tensor] = {}
    for name in names:
        twin.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs.setdefault(name, out))
    with torch.no_grad():
        twin(x)
    return {name: out.double().numpy() for name, out in outputs.items()}


def ridge_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """The documented probe, computed directly in float64 numpy: primal ridge on the fit half."""
    fit, scored = (index.numpy() for index in split(len(labels)))
    x, y = features[fit], labels[fit]
    targets = np.eye(labels.max() + 1)[y]
    mean_x, mean_t = x.mean(0), targets.mean(0)
    xc, tc = x - mean_x, targets - mean_t
    strength = RIDGE * (xc**2).sum() / x.shape[1]
    weights = np.linalg.solve(xc.T @ xc + strength * np.eye(x.shape[1]), xc.T @ tc)
    predicted = ((features[scored] - mean_x) @ weights + mean_t).argmax(1)
    return float((predicted == labels[scored]).mean())


def train(model: nn.Module, tracker: Tracker, steps: int, expected=None, probe_x=None, **step_args) -> None:
    """SGD on random batches; before each update, the oracle's outputs of the probe (if asked)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(1)
    for t in range(steps):
        if expected is not None:
            expected[t] = eval_outputs(model, tracker.layers, probe_x)  # the state before update t
        x = torch.randn(8, 12, generator=generator)
        nn.functional.cross_entropy(model(x), torch.arange(8) % 3).backward()
        opt.step()
        opt.zero_grad()
        tracker.step(loss=0.5, **step_args)


def test_probe_accuracy_and_class_rows_equal_direct_computations_on_the_step_s_weights(tmp_path):
    model, (x, y) = net(), labelled()
    expected: dict[int, dict[str, np.ndarray]] = {}
    with Tracker(model, every=2, probe=(x, y), linear_probes=True, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 6, expected, x)
    frame = ndtracker.load(tmp_path)
    activations = frame[frame.space == "activation"]
    assert sorted(activations.step.unique()) == [0, 2, 4] and set(activations.source) == {"probe"}
    assert frame[frame.space == "weight"].probe_accuracy.isna().all()
    for row in activations.itertuples():
        want = ridge_accuracy(expected[row.step][row.layer], y.numpy())
        assert row.probe_accuracy == pytest.approx(want, abs=1e-12), (row.step, row.layer)
    classes = ndtracker.load(tmp_path, table="classes")
    assert len(classes) == len(activations) and set(classes.source) == {"probe"} and (classes.rows == 48).all()
    assert set(classes.status) == {"ok"} and (classes.classes == CLASSES).all()
    for row in classes.itertuples():
        want = class_statistics(expected[row.step][row.layer], y.numpy())
        for name, value in want.items():
            if name == "axes_alignment":  # power iteration: checked in tests/classes
                continue
            # the capture is a float32 copy, centred in float32: NC1 (ill-conditioned here) to ~1e-5
            assert getattr(row, name) == pytest.approx(value, rel=1e-4, abs=1e-9), (row.step, row.layer, name)


def test_the_probe_changes_nothing_in_the_model_and_leaves_no_hook(tmp_path):
    model, (x, y) = net(), labelled()
    model[2].eval()  # a mixed state the probe must give back as it was
    flags = [m.training for m in model.modules()]
    running_mean = model[4].running_mean.clone()
    grad_mode = []
    model[0].register_forward_hook(lambda *args: grad_mode.append(torch.is_grad_enabled()))
    with Tracker(model, every=1, probe=(x, y), linear_probes=True, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(3):
            tracker.step()
            assert [m.training for m in model.modules()] == flags
    assert grad_mode and not any(grad_mode)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[4].running_mean, running_mean)
    assert hook_count(model) == 1  # only the test's own hook is left
    assert ndtracker.load(tmp_path).query("space == 'activation'").probe_accuracy.notna().all()


def test_training_labels_with_a_probe_warn_once_and_write_no_train_rows(tmp_path):
    model, (x, y) = net(), labelled()
    with pytest.warns(RuntimeWarning, match=r"step\(labels=...\) is not used with probe=") as caught:
        with Tracker(model, every=1, probe=(x, y), log_dir=str(tmp_path), detect=False) as tracker:
            train(model, tracker, 3, labels=torch.arange(8) % 3)
    assert sum("is not used with probe=" in str(w.message) for w in caught) == 1
    classes = ndtracker.load(tmp_path, table="classes")
    assert set(classes.source) == {"probe"} and sorted(classes.step.unique()) == [0, 1, 2]


def test_without_a_probe_class_rows_come_from_training(tmp_path):
    model = net()
    with Tracker(model, every=1, linear_probes=True, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 2, labels=torch.arange(8) % 3)
    assert set(ndtracker.load(tmp_path, table="classes").source) == {"train"}
    assert set(ndtracker.load(tmp_path).query("space == 'activation'").source) == {"train"}


def test_an_unlabelled_probe_writes_no_class_rows(tmp_path):
    model, (x, _) = net(), labelled()
    with Tracker(model, every=1, probe=x, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 2)
    assert ndtracker.load(tmp_path, table="classes").empty
    assert ndtracker.load(tmp_path).probe_accuracy.isna().all()


def test_a_subsampled_probe_keeps_its_labels_with_its_rows(tmp_path):
    """Features that encode the label: only consistently subsampled labels give perfect scores."""
    layer = nn.Linear(5, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(5)), layer.bias.zero_()
    y = torch.arange(64) % 2  # two classes: every fit half of 10 of the 20 kept rows has both
    x = 10 * nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(64, 5)
    with Tracker(layer, every=1, probe=(x, y), linear_probes=True, max_rows=20, log_dir=str(tmp_path),
                 detect=False) as tracker:  # fmt: skip
        for _ in range(3):
            tracker.step()
    classes = ndtracker.load(tmp_path, table="classes")
    assert (classes.rows == 20).all() and (classes.ncc_accuracy == 1.0).all() and (classes.nc1 < 1e-3).all()
    assert (ndtracker.load(tmp_path).query("space == 'activation'").probe_accuracy == 1.0).all()


def test_similarity_compares_the_probe_s_examples(tmp_path):
    model, (x, y) = net(), labelled()
    expected: dict[int, dict[str, np.ndarray]] = {}
    with Tracker(model, every=2, probe=(x, y), similarity=True, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 4, expected, x)
    table = ndtracker.load(tmp_path, table="similarity")
    assert sorted(table.step.unique()) == [0, 2] and set(table.status) == {"ok"} and (table.rows == 48).all()
    for step, rows in table.groupby("step"):
        layers = list(dict.fromkeys(rows.layer_a))
        want = cka_matrix([torch.from_numpy(expected[step][name]) for name in layers]).cka
        for row in rows.itertuples():
            want_cka = float(want[layers.index(row.layer_a), layers.index(row.layer_b)])
            assert row.cka == pytest.approx(want_cka, abs=1e-6)  # float32 examples, centred in float32


def test_a_turn_reads_its_extras_back_once(tmp_path, monkeypatch):
    """Class geometry, probes and gradient norms of a sample come to the host in one read-back."""
    reads = []
    original = geometry.to_host
    monkeypatch.setattr(geometry, "to_host", lambda vectors: reads.append(len(vectors)) or original(vectors))
    model = net()
    with Tracker(model, every=2, linear_probes=True, gradients=True, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 4, labels=torch.arange(8) % 3)
    frame = ndtracker.load(tmp_path)
    assert frame.query("space == 'weight' and step > 0").grad_norm.notna().all()
    assert frame.query("space == 'activation'").probe_accuracy.notna().all()
    assert reads == [9, 9]  # per logged sample, one read-back: 3 layers' classes and probes, 3 weights' norms


def test_a_data_loader_batch_is_inputs_and_labels(tmp_path):
    x, y = labelled(16)
    batch = next(iter(DataLoader(TensorDataset(x, y), batch_size=16)))  # a list [x, y]
    probe = as_probe(batch)
    assert probe.args[0] is batch[0] and probe.labels.tolist() == y.tolist()
    assert as_probe((x, y.numpy())).labels.dtype == torch.int64
    assert as_probe((x, y.reshape(-1, 1))).labels.shape == (16,)
    assert as_probe(({"input": x}, list(y.tolist()))).kwargs["input"] is x
    model = net()
    with Tracker(model, every=1, probe=batch, log_dir=str(tmp_path), detect=False):
        pass
    options = ndtracker.store.read_run_info(tmp_path)[-1]["options"]
    assert options["probe"] == {"args": [[16, 12]], "kwargs": {}, "labels": [16]}
    assert options["linear_probes"] is False and "probes" not in options


def test_the_old_probes_option_names_its_new_name(tmp_path):
    with pytest.raises(TypeError, match=r"Tracker\(probes=True\): the option was renamed linear_probes= .*pass "
                                        r"linear_probes=True"):  # fmt: skip
        Tracker(net(), probes=True, log_dir=str(tmp_path / "run"))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['colour'\]"):
        Tracker(net(), colour="red", log_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_probe_rows_are_nan_free_only_where_the_probe_reaches(tmp_path):
    """A probe batch that is too small for the probe gives null accuracy, never an error."""
    model = net()
    x, y = labelled(3)
    with Tracker(model, every=1, probe=(x, y), linear_probes=True, log_dir=str(tmp_path), detect=False) as tracker:
        tracker.step()
    act = ndtracker.load(tmp_path).query("space == 'activation'")
    assert act.probe_accuracy.isna().all() and (act.status == "ok").all()
    assert all(math.isnan(v) or v is None for v in act.probe_accuracy)
