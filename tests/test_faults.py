"""Faults never cost the user their run or their logs.

Each test injects one fault (a kill, an exception, a full or vanished disk, bad numbers, odd
shapes, pickling, a failing estimator or detector) and checks what the user sees: the warning, the
``status`` logged, and that training went on.
"""

from __future__ import annotations

import copy
import errno
import io
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import spectra
from ndtracker.vocabulary import METRICS
from ndtracker import Tracker
from training_helpers import mlp


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def train(model, tracker, steps, batch=16, scale=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = model(torch.randn(batch, 12) * scale).pow(2).mean()
        if loss.requires_grad:
            loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.step(loss=loss)


def messages(caught) -> list[str]:
    return [str(w.message) for w in caught]


# ------------------------------------------------------------------------------ kills and exceptions


@pytest.mark.parametrize("hooks", ["sampled", "permanent"])
def test_sigkill_during_compaction_leaves_readable_logs(tmp_path, hooks):
    """Killed while flushing every 50 ms (16 parts make a compaction): the logs still load, and
    hold every step up to one flush interval before the kill."""
    progress, run = tmp_path / "progress.txt", tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import time, torch, ndtracker
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        tracker = ndtracker.Tracker(model, every=1, log_dir={str(run)!r}, flush_secs=0.05,
                                    hooks={hooks!r})
        step = 0
        while True:
            model(torch.randn(16, 8)).sum().backward()
            tracker.step()
            with open({str(progress)!r}, "a") as f:
                f.write(f"{{time.time()}} {{step}}\\n")
            step += 1
            time.sleep(0.005)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not progress.exists() or len(progress.read_text().splitlines()) < 150):
            time.sleep(0.05)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    steps = [(float(t), int(s)) for t, s in (line.split() for line in progress.read_text().splitlines())]
    settled = max(s for t, s in steps if t < killed_at - 0.05 - 0.5)  # one flush interval, and slack
    df = ndtracker.load(run)
    events = ndtracker.load(run, events=True)  # readable even if empty
    assert df.step.max() >= settled and sorted(df.step.unique()) == list(range(df.step.max() + 1))
    assert df.groupby(["step", "layer", "space"]).size().max() == 1  # nothing read twice
    assert len(events.columns) > 0


class Boom(Exception):
    pass


def test_exception_mid_forward_in_a_sampled_step(tmp_path):
    model = mlp()
    error = Boom("user bug")

    def explode(module, args, output):
        raise error

    with pytest.raises(Boom) as raised:
        with Tracker(model, every=2, log_dir=str(tmp_path), flush_secs=3600, detect=False) as tracker:
            train(model, tracker, 3)
            model[4].register_forward_hook(explode)  # after layer "0" and "2" were captured
            model(torch.randn(8, 12))
    assert raised.value is error and raised.value.__cause__ is None and raised.value.__context__ is None
    model[4]._forward_hooks.clear()
    assert hook_count(model) == 0
    assert all(layer.capture is None for layer in tracker._layers)
    assert sorted(ndtracker.load(tmp_path).step.unique()) == [0, 2]  # flushed on exit, not after an hour


def test_keyboard_interrupt_closes_the_tracker(tmp_path):
    model = mlp()
    with pytest.raises(KeyboardInterrupt):
        with Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=3600) as tracker:
            train(model, tracker, 2)
            raise KeyboardInterrupt
    assert hook_count(model) == 0 and len(ndtracker.load(tmp_path)) == 2 * 3 * 2


# ------------------------------------------------------------------------------ the disk


def test_disk_full_warns_once_training_goes_on_and_the_rows_come_back(tmp_path, monkeypatch):
    model = mlp()
    write_table = pq.write_table

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=3600) as tracker:
            monkeypatch.setattr(pq, "write_table", full)
            for _ in range(3):
                train(model, tracker, 2)
                tracker.flush()
            assert len(ndtracker.load(tmp_path)) == 0
            monkeypatch.setattr(pq, "write_table", write_table)  # space again
            train(model, tracker, 1)
    full_disk = [m for m in messages(caught) if "No space left" in m]
    assert len(full_disk) == 1
    assert "could not write to" in full_disk[0] and "training continues" in full_disk[0]
    assert sorted(ndtracker.load(tmp_path).step.unique()) == list(range(7))


def test_run_directory_deleted_mid_run_is_recreated(tmp_path):
    model = mlp()
    run = tmp_path / "run"
    with Tracker(model, every=1, log_dir=str(run), flush_secs=3600) as tracker:
        train(model, tracker, 2)
        tracker.flush()
        shutil.rmtree(run)
        train(model, tracker, 2)
        with pytest.warns(RuntimeWarning, match="restored the entry of run .* deleted"):  # one warning
            tracker.flush()
    df = ndtracker.load(run)
    assert sorted(df.step.unique()) == [2, 3]  # what was on disk went with the directory
    assert list(df.run_id.unique()) == [tracker.run_id]


def test_run_directory_replaced_by_a_file_warns_and_keeps_training(tmp_path):
    model = mlp()
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(run), flush_secs=3600, detect=False) as tracker:
            train(model, tracker, 1)
            tracker.flush()
            shutil.rmtree(run)
            run.write_text("not a directory")
            train(model, tracker, 3)
            assert tracker.current_step == 4
    text = messages(caught)
    assert any("could not write to" in m and "training continues" in m for m in text)
    assert any(m.startswith(f"ndtracker lost 18 rows of run {tracker.run_id}") for m in text)


# ------------------------------------------------------------------------------ bad numbers and shapes


def test_nan_and_inf_in_activations_and_weights(tmp_path):
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            train(model, tracker, 1)
            with torch.no_grad():
                model[2].weight[0, 0] = math.inf
            for _ in range(2):
                model(torch.randn(8, 12)).sum().backward()
                tracker.step()
    df = ndtracker.load(tmp_path).set_index(["step", "layer", "space"])
    assert (df.loc[0].status == "ok").all()
    # a step's weight row holds the weights as its step began (issue 10): the edit made after
    # step 0 ended shows in the weight rows from step 2 on, in the activations from step 1 on
    assert df.loc[(1, "2", "weight")].status == "ok"
    assert df.loc[(2, "2", "weight")].status == "nonfinite"
    assert df.loc[(1, "2", "activation")].status == "nonfinite"  # inf times 0 gives NaN too
    assert df.loc[(1, "0", "activation")].status == "ok"
    assert math.isnan(df.loc[(2, "4", "activation")].stable_rank)
    nan_warnings = [m for m in messages(caught) if "metrics are NaN" in m]
    assert sorted(nan_warnings) == sorted(set(nan_warnings))  # once per layer and space
    assert "ndtracker: layer '2' (weight): metrics are NaN at step 2 (nonfinite); training continues" in nan_warnings


def test_empty_one_row_and_zero_outputs(tmp_path):
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is an error worth a warning
        with Tracker(model, every=1, log_dir=str(tmp_path), spaces="activation", detect=False) as tracker:
            for batch in (0, 1):
                model(torch.randn(batch, 12)).sum().backward()
                tracker.step()
            with torch.no_grad():
                model[0].weight.zero_(), model[0].bias.zero_()
            model(torch.randn(8, 12)).sum().backward()
            tracker.step()
    df = ndtracker.load(tmp_path).set_index(["step", "layer"])
    assert (df.loc[0].status == "empty").all() and (df.loc[0].rows == 0).all()
    assert (df.loc[1].status == "zero").all() and (df.loc[1].rows == 1).all()  # one row, centred
    assert df.loc[(2, "0")].status == "zero" and df.loc[(2, "0")].stable_rank != df.loc[(2, "0")].stable_rank
    assert df.loc[(2, "4")].status == "zero"  # constant output: the bias of a zero input


def test_one_row_without_centring_has_rank_one(tmp_path):
    model = mlp()
    with Tracker(model, every=1, log_dir=str(tmp_path), center=False, spaces="activation", detect=False) as t:
        model(torch.randn(1, 12)).sum().backward()
        t.step()
    df = ndtracker.load(tmp_path)
    assert (df.status == "ok").all() and df.stable_rank.to_numpy() == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_extreme_magnitudes_give_the_same_figures(tmp_path, scale):
    figures = {}
    for name, factor in (("unit", 1.0), ("scaled", scale)):
        model = mlp()
        with torch.no_grad():
            model[0].weight.mul_(factor), model[0].bias.mul_(factor)  # outputs and weights at 1e±30
        torch.manual_seed(2)
        options = dict(layers="0", metrics=METRICS, detect=False)
        with Tracker(model, every=1, log_dir=str(tmp_path / name), **options) as t:
            model[0](torch.randn(64, 12)).sum().backward()
            t.step()
        figures[name] = ndtracker.load(tmp_path / name).query("layer == '0'")
    unit, scaled = figures["unit"], figures["scaled"]
    assert (scaled.status == "ok").all()
    for metric in ("stable_rank", "participation_ratio", "effective_rank"):
        assert scaled[metric].to_numpy() == pytest.approx(unit[metric].to_numpy(), rel=1e-4)


@pytest.mark.filterwarnings("ignore:.*metrics are NaN")
def test_activations_near_the_float32_limit(tmp_path):
    model = nn.Linear(4, 8)
    with torch.no_grad():
        model.weight.mul_(2e37), model.bias.fill_(1e37)
    with Tracker(model, every=1, log_dir=str(tmp_path), spaces="activation", detect=False) as t:
        model(torch.randn(64, 4)).sum()
        t.step()
    assert ndtracker.load(tmp_path).status.item() == "ok"


# ------------------------------------------------------------------------------ pickling


def test_model_pickles_at_every_point_of_a_tracked_run(tmp_path):
    """Between sampled steps there is no hook; while hooks are armed they pickle as inert hooks."""
    model = mlp()
    with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
        train(model, tracker, 1)  # step 1 is not sampled: no hook at all
        assert hook_count(model) == 0
        assert hook_count(pickle.loads(pickle.dumps(model))) == 0
        train(model, tracker, 1)  # step 2 is sampled: hooks armed
        assert hook_count(model) == 3
        buffer = io.BytesIO()
        torch.save(model, buffer)
        copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
        copies.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
        for other in copies:
            other(torch.randn(5, 12))  # the copies' hooks do nothing
        assert all(layer.capture is None for layer in tracker._layers)
        model(torch.randn(16, 12)).sum().backward()
        tracker.step()
    assert hook_count(model) == 0
    act = ndtracker.load(tmp_path).query("space == 'activation'")
    assert sorted(act.step.unique()) == [0, 2] and (act.rows == 16).all()


def test_model_with_permanent_hooks_pickles(tmp_path):
    model = mlp()
    with Tracker(model, every=3, log_dir=str(tmp_path), hooks="permanent", detect=False) as tracker:
        train(model, tracker, 2)
        restored = pickle.loads(pickle.dumps(model))
    restored(torch.randn(4, 12))
    assert hook_count(model) == 0 and hook_count(restored) == 3  # inert leftovers in the copy only


# ------------------------------------------------------------------------------ failing internals


def test_a_failing_decomposition_costs_one_row(tmp_path, monkeypatch):
    measure_many = spectra.measure_many

    def flaky(jobs):
        if any(tuple(job.matrix.shape) == (16, 16) for job in jobs):
            raise torch.linalg.LinAlgError("eigvalsh did not converge")
        return measure_many(jobs)

    monkeypatch.setattr(spectra, "measure_many", flaky)
    model = mlp()
    with pytest.warns(RuntimeWarning, match=r"layer '2' \(activation\): measurement failed: .*did not converge"):
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            model(torch.randn(16, 12)).sum().backward()
            tracker.step()
    df = ndtracker.load(tmp_path).set_index(["layer", "space"])
    assert df.loc[("2", "activation")].status == "failed"
    assert (df.drop(("2", "activation")).status == "ok").all()


def test_a_failing_capture_warns_and_skips_the_layer(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(spectra, "activation_matrix", broken)
    model = mlp()
    with pytest.warns(RuntimeWarning, match="capture failed: MemoryError"):
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            train(model, tracker, 2)
    assert set(ndtracker.load(tmp_path).space) == {"weight"}


def test_a_failing_detector_never_stops_logging(tmp_path, monkeypatch):
    from ndtracker import detect

    class Broken(detect.OnlineDetector):
        def update(self, value):
            raise ValueError("detector bug")

        def finish(self):
            raise ValueError("detector bug at finish")

    monkeypatch.setattr(detect, "OnlineDetector", Broken)
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path)) as tracker:
            train(model, tracker, 3)
    assert len(ndtracker.load(tmp_path)) == 3 * 3 * 2
    stopped = [m for m in messages(caught) if "online detection stopped: ValueError('detector bug')" in m]
    assert len(stopped) == 6  # once per series, then that series is left alone
