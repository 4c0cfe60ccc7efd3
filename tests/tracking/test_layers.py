"""Layer selection and the tensor measured in each kind of module output."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from ndtracker.tracking.layers import cap_layers, evenly_spaced, first_tensor, layer_weight, select_layers
from ndtracker import Tracker
from training_helpers import mlp


def test_layer_selection_by_name_glob_type_and_module(tmp_path):
    model = mlp(seed=None)
    kw = dict(log_dir=str(tmp_path), detect=False)
    assert Tracker(model, layers="2", **kw).layers == ["2"]
    assert Tracker(model, layers=["[02]"], **kw).layers == ["0", "2"]
    assert Tracker(model, layers=nn.Linear, **kw).layers == ["0", "2", "4"]
    assert Tracker(model, layers=[model[4], "0"], **kw).layers == ["0", "4"]


def test_default_selection_caps_layers_evenly_and_skips_attention_internals(tmp_path):
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])
    tracker = Tracker(deep, max_layers=4, log_dir=str(tmp_path), detect=False)
    assert tracker.layers == ["0", "3", "6", "9"]
    assert evenly_spaced(list(range(5)), 10) == [0, 1, 2, 3, 4]
    attention = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    names = Tracker(attention, log_dir=str(tmp_path), detect=False).layers
    assert names == ["self_attn", "linear1", "linear2"]


def names(model, spec=None, cap=None):
    return [layer.name for layer in select_layers(model, spec, cap)]


def test_embeddings_are_opt_in_and_leaf_weights_are_found():
    class Custom(nn.Module):  # a Hugging Face Conv1D-like leaf: a 2-D weight, no known type
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return x @ self.weight

    model = nn.Sequential(nn.Embedding(10, 4), Custom(), nn.LayerNorm(6))
    assert names(model) == ["1"]
    assert names(model, nn.Embedding) == ["0"]


def test_layer_weight_per_module_type():
    assert layer_weight(nn.Linear(3, 4)).shape == (4, 3)
    assert layer_weight(nn.Conv2d(3, 8, 3)).shape == (8, 3, 3, 3)
    assert layer_weight(nn.MultiheadAttention(8, 2)).shape == (24, 8)
    assert layer_weight(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)).shape == (8, 8)
    assert layer_weight(nn.LSTM(3, 5, num_layers=2)).shape == (20, 5)


def test_first_tensor_of_each_output_kind():
    @dataclasses.dataclass
    class Out:
        note: str
        hidden: torch.Tensor

    t = torch.ones(2)
    assert first_tensor(t) is t
    assert first_tensor((None, (t, 1))) is t
    assert first_tensor({"a": 1, "b": t}) is t
    assert first_tensor({"a": torch.zeros(1), "b": t}, key="b") is t
    assert first_tensor(Out("x", t)) is t
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 3, 4), [3, 2], batch_first=True)
    assert first_tensor(packed).shape == (5, 4)
    assert first_tensor("text") is None


def test_bad_layer_entry_type():
    with pytest.raises(TypeError, match="layers entries must be names, glob patterns"):
        select_layers(mlp(seed=None), [3.5])


def test_a_model_that_is_itself_one_layer_is_tracked_under_the_empty_name():
    assert names(nn.Linear(3, 4)) == [""]
    assert names(nn.LSTM(3, 4)) == [""]
    assert names(nn.MultiheadAttention(8, 2)) == [""]  # its out_proj lies inside it
    assert names(nn.Linear(3, 4), nn.Linear) == [""]
    assert names(mlp(seed=None), "*") == ["0", "1", "2", "3", "4"]  # a glob never matches the model itself
    with pytest.raises(ValueError, match=r"module names start with: \['0', '1'"):
        select_layers(mlp(seed=None), "nope")


def test_weight_is_looked_up_when_measured():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    [layer] = select_layers(model, "1")
    model[1].weight = nn.Parameter(torch.zeros(3, 4))
    assert layer.weight is model[1].weight


def test_output_key_names_an_attribute_of_any_object():
    class Out:
        def __init__(self, t):
            self.logits, self.other = t, torch.zeros(1)

    t = torch.ones(2)
    assert first_tensor(Out(t), key="logits") is t
    assert first_tensor(Out(t)) is None
    assert first_tensor({"x": Out(t)}, key="logits") is None  # the key applies at the top level only


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(4, 4) for _ in range(4))


class Encoder(nn.Module):
    """A BERT-like layout: a stem, twelve blocks of four Linear layers, a head."""

    def __init__(self, blocks: int = 12):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.layer = nn.ModuleList(Block() for _ in range(blocks))
        self.head = nn.Linear(4, 2)


def test_the_cap_keeps_whole_blocks_in_step_and_says_what_it_left_out(tmp_path):
    with pytest.warns(UserWarning, match=r"tracking 42 of 50 layers \(max_layers=44\): 10 of 12 repeated "
                      r"blocks, whole and evenly spaced over depth; pass max_layers=None to track all 50"):
        names = Tracker(Encoder(), max_layers=44, log_dir=str(tmp_path), detect=False).layers
    assert names[0] == "stem" and names[-1] == "head"
    blocks = sorted({int(name.split(".")[1]) for name in names if name.startswith("layer.")})
    assert blocks[0] == 0 and blocks[-1] == 11 and len(blocks) == 10
    for block in blocks:  # every kept block is whole
        assert [n for n in names if n.startswith(f"layer.{block}.")] == [f"layer.{block}.{r}" for r in ("query", "key", "value", "out")]


def test_no_warning_when_nothing_is_left_out(tmp_path, recwarn):
    Tracker(Encoder(2), log_dir=str(tmp_path), detect=False)
    assert not [w for w in recwarn if "max_layers" in str(w.message)]


def test_the_cap_falls_back_to_even_layers_when_no_block_fits():
    chosen = [(f"layer.{b}.{r}", None) for b in range(3) for r in range(5)]
    kept, note = cap_layers(chosen, 4)
    assert [name for name, _ in kept] == ["layer.0.0", "layer.1.0", "layer.1.4", "layer.2.4"]
    assert note.startswith("tracking 4 of 15 layers (max_layers=4): evenly spaced over depth")


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_max_layers_must_be_a_positive_integer_or_none(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"max_layers must be a positive integer or None, got {re.escape(repr(bad))}"):
        Tracker(Encoder(1), max_layers=bad, log_dir=str(tmp_path), detect=False)
