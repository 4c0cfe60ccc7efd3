"""Resource bounds: no activation outlives its step, captures are capped, buffers are bounded.

The Tracker docstring states the bounds checked here: per tracked layer, a float32 copy of at most
``max_rows`` rows of the output, held from the layer's forward until ``step()``; never a reference to
the output itself; at most ``max_buffer_rows`` rows per table in memory while the disk fails.
"""

from __future__ import annotations

import gc
import threading
import warnings
import weakref

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import spectra
from ndtracker import Tracker
from ndtracker.tracking.events import StepAxis
from training_helpers import mlp


class Watched(nn.Module):
    """A Linear layer that remembers a weak reference to every output it returns."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.outputs: list[weakref.ref] = []

    def forward(self, x):
        out = self.linear(x)
        self.outputs.append(weakref.ref(out))
        return out


@pytest.mark.parametrize("center", [True, False])
def test_no_reference_to_a_layer_output_survives(tmp_path, center):
    model = nn.Sequential(Watched(12, 64), nn.ReLU(), nn.Linear(64, 3))
    with Tracker(model, every=1, log_dir=str(tmp_path), layers="0", center=center, detect=False) as tracker:
        for _ in range(2):
            loss = model(torch.randn(32, 12)).pow(2).mean()
            loss.backward()
            del loss
            gc.collect()
            assert model[0].outputs[-1]() is None  # even before step(): the capture is a copy
            captures = [weakref.ref(layer.capture) for layer in tracker._layers]
            tracker.step()
            gc.collect()
            assert all(ref() is None for ref in captures)  # measured and dropped
            assert all(layer.capture is None for layer in tracker._layers)
    assert len(ndtracker.load(tmp_path)) == 2  # a Watched module has no weight of its own


def test_capture_is_a_copy_not_a_view_of_an_output_changed_in_place(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True))
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.update(out=out.detach().clone()))
    with Tracker(model, every=1, log_dir=str(tmp_path), layers="0", center=False, detect=False) as t:
        model(torch.randn(20, 8))  # ReLU overwrites the Linear output in place
        t.step()
    expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(seen["out"].double()) ** 2)[0].item()
    got = ndtracker.load(tmp_path).query("space == 'activation'").stable_rank.item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_row_cap_bounds_what_a_sample_holds(tmp_path, monkeypatch):
    held = []
    measure_many = spectra.measure_many
    monkeypatch.setattr(spectra, "measure_many", lambda jobs: held.append([j.matrix for j in jobs]) or measure_many(jobs))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8))
    with Tracker(model, every=1, log_dir=str(tmp_path), max_rows=300, spaces="activation", detect=False) as t:
        model(torch.randn(10, 500, 16)).sum().backward()  # 5000 token rows per layer
        t.step()
    matrices = held[0]
    assert [tuple(m.shape) for m in matrices] == [(300, 24), (300, 8)]
    assert all(m.dtype == torch.float32 for m in matrices)
    captured_bytes = sum(m.numel() * m.element_size() for m in matrices)
    assert captured_bytes == 300 * (24 + 8) * 4  # the documented bound: max_rows x features x 4
    assert (ndtracker.load(tmp_path).rows == 300).all()


def test_non_sampled_steps_measure_nothing_and_hold_no_hook(tmp_path, monkeypatch):
    calls = []
    measure_many = spectra.measure_many
    monkeypatch.setattr(spectra, "measure_many", lambda jobs: calls.append(1) or measure_many(jobs))
    model = mlp()
    with Tracker(model, every=10, log_dir=str(tmp_path), detect=False) as tracker:
        for step in range(25):
            hooked = any(m._forward_hooks for m in model.modules())
            assert hooked == (step % 10 == 0)
            model(torch.randn(4, 12)).sum().backward()
            tracker.step()
    # per sample, one batch as it begins (its weights: at construction or at the end of the step
    # before) and one as it ends (its activations); issue 10's weight timing made this 3 -> 6
    assert len(calls) == 6


def test_log_buffer_is_bounded_while_the_disk_fails(tmp_path, monkeypatch):
    write_table = pq.write_table

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=3600, max_buffer_rows=30) as tracker:
            monkeypatch.setattr(pq, "write_table", full)
            for _ in range(20):  # 120 rows while the disk is full
                model(torch.randn(8, 12)).sum().backward()
                tracker.step()
                tracker.flush()
            monkeypatch.setattr(pq, "write_table", write_table)
            tracker.flush()
    df = ndtracker.load(tmp_path)
    assert len(df) == 30 and sorted(df.step.unique()) == list(range(15, 20))  # the newest rows
    text = [str(w.message) for w in caught]
    assert any("keeping up to 30 rows per table in memory" in m for m in text)
    assert any(f"dropped the oldest 90 metrics rows of run {tracker.run_id}" in m for m in text)


def test_close_stops_the_writer_thread(tmp_path):
    model = mlp()
    tracker = Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=0.01)
    name = f"ndtracker-{tracker.run_id}"
    assert any(thread.name == name for thread in threading.enumerate())
    tracker.close()
    assert not any(thread.name == name for thread in threading.enumerate())


def test_step_axis_memory_grows_with_irregularities_not_with_length():
    axis = StepAxis()
    for step in range(0, 500_000, 5):
        axis.append(step)
    assert len(axis._runs) == 1 and axis[0] == 0 and axis[99_999] == 499_995
    irregular = [0, 5, 10, 12, 14, 100, 101, 200]
    axis = StepAxis()
    for step in irregular:
        axis.append(step)
    assert [axis[i] for i in range(len(irregular))] == irregular
    with pytest.raises(IndexError, match="sample index 8 out of range 0..7"):
        axis[8]
