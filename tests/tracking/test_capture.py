"""Capture of layer outputs of every form: tuples of recurrent layers, packed sequences, dicts,
dataclasses and other objects, with and without ``output_key``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker
from training_helpers import B, assert_all_ok, shapes, train


# ------------------------------------------------------------------------------ recurrent


def test_lstm_and_gru_tuple_outputs(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 10, num_layers=2, bidirectional=True)  # (T, B, F) layout
            self.gru = nn.GRU(20, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            out, (h, c) = self.lstm(x)
            out, h = self.gru(out.transpose(0, 1))
            return self.head(h[-1])

    torch.manual_seed(0)
    tracker, df = train(Net(), lambda: torch.randn(5, B, 6), tmp_path)
    assert tracker.layers == ["lstm", "gru", "head"]
    assert shapes(df) == {"lstm": (5 * B, 20), "gru": (B * 5, 8), "head": (B, 2)}
    assert shapes(df, "weight") == {"lstm": (40, 10), "gru": (24, 8), "head": (2, 8)}  # weight_hh of the last layer
    assert_all_ok(tracker, df)


def test_lstm_on_a_packed_sequence(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 10, batch_first=True)
            self.head = nn.Linear(10, 2)

        def forward(self, batch):
            x, lengths = batch
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)
            return self.head(h[-1])

    lengths = torch.tensor([5, 2, 3, 1])
    tracker, df = train(Net(), lambda: (torch.randn(B, 5, 6), lengths), tmp_path)
    assert shapes(df)["lstm"] == (int(lengths.sum()), 10)  # the packed data, no padding rows
    assert_all_ok(tracker, df)


# ------------------------------------------------------------------------------ outputs


@dataclasses.dataclass
class EncoderOutput:
    attention: torch.Tensor | None
    hidden: torch.Tensor


class Namespace:  # an output object that is neither a mapping nor a dataclass
    def __init__(self, logits):
        self.logits = logits


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder, self.scorer = nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 3)

    def encode(self, x):
        return EncoderOutput(attention=None, hidden=self.encoder(x))


class DictModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return {"aux": x.sum(-1), "features": self.fc(x)}


class DataclassModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)

    def forward(self, x):
        return EncoderOutput(attention=None, hidden=self.fc(x))


class ObjectModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return Namespace(self.fc(x))


class MultiOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.mid, self.out = DataclassModule(), DictModule(), ObjectModule()

    def forward(self, x):
        return self.out(self.mid(self.enc(x).hidden)["features"]).logits


def test_dict_dataclass_and_object_outputs_with_output_key(tmp_path):
    model = MultiOutput()
    layers = ["enc", "mid", "out"]
    # the dict's key and the dataclass's first tensor field; the object has no "features"
    with pytest.warns(RuntimeWarning, match=r"layer 'out' .*\(a Namespace\) holds no tensor; pass output_key"):
        _, df = train(model, lambda: torch.randn(B, 6), tmp_path / "a", layers=layers, output_key="features")
    assert shapes(df) == {"enc": (B, 8), "mid": (B, 4)}
    tracker, df = train(model, lambda: torch.randn(B, 6), tmp_path / "b", layers="out", output_key="logits")
    assert shapes(df) == {"out": (B, 3)}  # an attribute of any object
    assert_all_ok(tracker, df)


def test_dict_output_without_output_key_takes_the_first_tensor(tmp_path):
    tracker, df = train(MultiOutput(), lambda: torch.randn(B, 6), tmp_path, layers="mid")
    assert shapes(df) == {"mid": (B, 1)}  # "aux" comes first: a (B,) tensor is one column


def test_layers_of_one_sample_share_one_row_draw_per_row_count(tmp_path, monkeypatch):
    """Two conv layers whose outputs have the same positions draw their capped rows once per
    sample (one permutation, not one per layer), and each sample draws anew."""
    drawn: list[int] = []
    randperm = torch.randperm

    def counting(count, *args, **kwargs):
        drawn.append(count)
        return randperm(count, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", counting)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    with Tracker(model, every=2, log_dir=tmp_path, max_rows=50, detect=False, spaces=("activation",)) as tracker:
        for _ in range(4):
            model(x).sum().backward()
            tracker.step()
    assert drawn == [2 * 8 * 8, 2 * 8 * 8]  # samples at steps 0 and 2: one draw each
    frame = ndtracker.load(tmp_path)
    assert len(frame) == 4 and frame["stable_rank"].notna().all()
