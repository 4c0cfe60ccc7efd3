"""The opt-in measurements wired into the Tracker: gradient norms, probes, similarity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker
from ndtracker.spectra.probes import probe_accuracy
from ndtracker.spectra.similarity import cka_matrix
from training_helpers import mlp


def _batch(seed: int, rows: int = 48):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 12, generator=generator)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _grad_hooks(model: nn.Module) -> int:
    return sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())


def test_grad_norm_is_the_gradient_the_optimizer_saw_even_after_zero_grad(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    with Tracker(model, every=2, log_dir=str(tmp_path), gradients=True, detect=False) as tracker:
        for step in range(4):
            x, y = _batch(step)
            for half in (x[:24], x[24:]):  # gradient accumulation over two micro-batches
                nn.functional.cross_entropy(model(half), y[:24]).backward()
            seen[step] = {name: model.get_submodule(name).weight.grad.norm().item() for name in tracker.layers}
            opt.step()
            opt.zero_grad()  # before tracker.step(): the hook already kept the norm
            assert _grad_hooks(model) == (len(tracker.layers) if step % 2 == 0 else 0)
            tracker.step(loss=0.0)
            assert _grad_hooks(model) == (len(tracker.layers) if step % 2 == 1 else 0)
    assert _grad_hooks(model) == 0
    frame = ndtracker.load(tmp_path)
    weights = frame[frame.space == "weight"]
    assert sorted(weights.step.unique()) == [0, 2]
    for row in weights.itertuples():
        assert row.grad_norm == pytest.approx(seen[row.step][row.layer], rel=1e-5)
    assert frame[frame.space == "activation"].grad_norm.isna().all()


def test_off_by_default_no_gradient_hook_and_null_columns(tmp_path):
    model = mlp()
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        x, y = _batch(0)
        nn.functional.cross_entropy(model(x), y).backward()
        assert _grad_hooks(model) == 0
        tracker.step(loss=0.0, labels=y)
    frame = ndtracker.load(tmp_path)
    assert frame.grad_norm.isna().all() and frame.probe_accuracy.isna().all()
    assert len(ndtracker.load(tmp_path, table="similarity")) == 0


def test_probe_accuracy_and_similarity_equal_direct_computations(tmp_path):
    model = mlp(widths=(12, 32, 16, 3))
    outputs: dict[str, torch.Tensor] = {}
    def keep(name):
        def hook(module, args, output):
            outputs.setdefault(name, output.detach().clone())
        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in ("0", "2", "4")]
    x, y = _batch(3, rows=40)
    with Tracker(model, every=1, log_dir=str(tmp_path), linear_probes=True, similarity=True, detect=False) as tracker:
        model(x).sum().backward()
        tracker.step(loss=1.0, labels=y)
    for handle in handles:
        handle.remove()
    frame = ndtracker.load(tmp_path)
    act = frame[frame.space == "activation"].set_index("layer")
    for name in tracker.layers:
        assert act.probe_accuracy[name] == pytest.approx(probe_accuracy(outputs[name], y).accuracy)
    pairs = ndtracker.load(tmp_path, table="similarity")
    assert list(pairs.columns) == ["run_id", "step", "layer_a", "layer_b", "space", "cka", "rows", "status", "wall_time"]
    assert len(pairs) == 6 and (pairs.status == "ok").all() and (pairs.rows == 40).all()
    direct = cka_matrix([outputs[n] for n in tracker.layers]).cka
    index = {name: i for i, name in enumerate(tracker.layers)}
    for row in pairs.itertuples():
        assert row.cka == pytest.approx(direct[index[row.layer_a], index[row.layer_b]].item())
        assert index[row.layer_a] <= index[row.layer_b]


def test_a_conv_net_compares_pooled_examples(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    with Tracker(model, every=1, log_dir=str(tmp_path), similarity=True, detect=False) as tracker:
        model(torch.randn(6, 3, 8, 8)).sum().backward()
        tracker.step()
    pairs = ndtracker.load(tmp_path, table="similarity")
    assert len(pairs) == 6 and (pairs.rows == 6).all() and (pairs.status == "ok").all()
    diagonal = pairs[pairs.layer_a == pairs.layer_b]
    assert np.allclose(diagonal.cka, 1.0)


def test_tiny_batches_log_a_status_not_a_number(tmp_path):
    model = mlp()
    with Tracker(model, every=1, log_dir=str(tmp_path), similarity=True, linear_probes=True, detect=False) as tracker:
        x, y = _batch(0, rows=3)
        model(x).sum().backward()
        tracker.step(labels=y)
    pairs = ndtracker.load(tmp_path, table="similarity")
    assert (pairs.status == "few_rows").all() and pairs.cka.isna().all()
    assert ndtracker.load(tmp_path).probe_accuracy.isna().all()


def test_probes_without_labels_warn_once_and_training_goes_on(tmp_path):
    model = mlp()
    with pytest.warns(RuntimeWarning, match="linear_probes=True but step.. got no labels"):
        with Tracker(model, every=1, log_dir=str(tmp_path), linear_probes=True, detect=False) as tracker:
            for _ in range(3):
                model(_batch(0)[0]).sum().backward()
                tracker.step()
    assert ndtracker.load(tmp_path).probe_accuracy.isna().all()


@pytest.mark.parametrize("option, spaces", [("similarity", "weight"), ("linear_probes", "weight"), ("gradients", "activation")])
def test_an_option_without_its_space_raises(tmp_path, option, spaces):
    with pytest.raises(ValueError, match=f"{option}=True needs the"):
        Tracker(mlp(), log_dir=str(tmp_path), spaces=spaces, **{option: True})


def test_a_non_bool_flag_raises(tmp_path):
    with pytest.raises(TypeError, match="similarity must be True or False, got 'yes'"):
        Tracker(mlp(), log_dir=str(tmp_path), similarity="yes")


def test_frozen_weights_have_no_grad_norm(tmp_path):
    model = mlp()
    model[0].weight.requires_grad_(False)
    with Tracker(model, every=1, log_dir=str(tmp_path), gradients=True, detect=False) as tracker:
        model(_batch(0)[0]).sum().backward()
        tracker.step()
    weights = ndtracker.load(tmp_path).query("space == 'weight'").set_index("layer")
    assert math.isnan(weights.grad_norm["0"]) and weights.grad_norm["2"] > 0


def test_a_tied_weight_reads_its_norm_once_for_all_its_layers(tmp_path):
    """Two layers sharing one weight (as an embedding and a tied output head) both log its norm,
    and the layers after them keep their own (one read per weight, not per owner)."""
    torch.manual_seed(0)
    first, tied, last = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 3)
    tied.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), tied, nn.Tanh(), last)
    with Tracker(model, every=1, log_dir=str(tmp_path), gradients=True, detect=False) as tracker:
        x, y = _batch(0)
        nn.functional.cross_entropy(model(x), y).backward()
        want = {"0": first.weight.grad.norm().item(), "2": first.weight.grad.norm().item(),
                "4": last.weight.grad.norm().item()}  # fmt: skip
        tracker.step()
    rows = ndtracker.load(tmp_path)
    weights = rows[(rows.space == "weight") & (rows.step == 0)].set_index("layer")
    for name, norm in want.items():
        assert weights.loc[name, "grad_norm"] == pytest.approx(norm, rel=1e-5), name
