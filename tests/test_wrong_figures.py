"""No wrong figure logged as ``ok``, no sample lost to an odd loss, SIGTERM flushes a Tracker.

From issue 18: complex tensors were measured by their real part with status ``ok``; a module
replaced mid-run kept its orphaned weight logged as ``ok``; a loss of ``10**400`` dropped every row
of its sample (and later samples silently); rows repeated in the logs were counted twice; SIGTERM
lost the rows since the last flush, like SIGKILL.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
import time
import warnings

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker, spectra
from training_helpers import mlp


def step(model, tracker, loss=None, batch=8):
    out = model(torch.randn(batch, 12))
    value = (out.abs() if out.is_complex() else out).pow(2).mean()
    value.backward()
    tracker.step(loss=value if loss is None else loss)


class ComplexLinear(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width, dtype=torch.cfloat))

    def forward(self, x):
        return x.to(torch.cfloat) @ self.weight.T


def test_complex_tensors_are_never_logged_as_ok(tmp_path):
    model = nn.Sequential(nn.Linear(12, 6), ComplexLinear(6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, layers=["0", "1"], log_dir=str(tmp_path), detect=False) as tracker:
            for _ in range(3):
                step(model, tracker)
    frame = ndtracker.load(tmp_path)
    assert not (frame.layer == "1").any()  # before: its real part, with status "ok"
    assert (frame[frame.layer == "0"].status == "ok").all() and len(frame) == 3 * 2
    text = [str(w.message) for w in caught]
    assert sum("layer '1' (activation)" in m and "complex" in m for m in text) == 1
    assert sum("layer '1' (weight)" in m and "complex" in m for m in text) == 1
    with pytest.raises(TypeError, match="complex tensors .* are not measured"):
        spectra.weight_matrix(torch.ones(2, 2, dtype=torch.cfloat))


def test_a_replaced_module_is_no_longer_logged(tmp_path):
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            step(model, tracker)
            model[2] = nn.Linear(32, 16)  # the old module's weight no longer trains
            for _ in range(2):
                step(model, tracker)
    frame = ndtracker.load(tmp_path)
    replaced = frame[frame.layer == "2"]
    # before: its orphaned weight, "ok", every step; step 1's weights were measured as step 1 began
    # (when step() ended step 0), before the replacement (issue 10's weight timing), so one more row
    assert sorted(zip(replaced.step, replaced.space)) == [(0, "activation"), (0, "weight"), (1, "weight")]
    assert (frame[frame.layer != "2"].groupby("layer").step.nunique() == 3).all()
    assert sum("layer '2' was replaced in the model" in str(w.message) for w in caught) == 1


def test_a_loss_beyond_the_float_range_keeps_the_sample(tmp_path):
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
            step(model, tracker, loss=10**400)
            step(model, tracker, loss=-(10**400))
            step(model, tracker)
    frame = ndtracker.load(tmp_path)
    assert frame.step.nunique() == 3 and len(frame) == 3 * 3 * 2  # before: steps 0 and 1 lost
    losses = frame.groupby("step").loss.first()
    assert math.isnan(losses[0]) and math.isnan(losses[1]) and math.isfinite(losses[2])  # null
    assert sum("is not a number: it is logged as null" in str(w.message) for w in caught) == 1
    assert not [w for w in caught if "failed" in str(w.message)]


def test_rows_copied_into_another_part_are_counted_once(tmp_path):
    model = mlp()
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(4):
            step(model, tracker)
    [part] = (tmp_path / "metrics").glob("part-*.parquet")
    shutil.copy(part, tmp_path / "metrics" / "part copy.parquet")
    frame = ndtracker.load(tmp_path)
    assert len(frame) == 4 * 3 * 2 and not frame.duplicated(["step", "layer", "space"]).any()
    rep = ndtracker.report(tmp_path)
    assert (rep.summary.samples == 4).all()  # before: 8 samples per series


TRACKED_CHILD = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, sys.argv[3])  # the tests folder, for training_helpers
    from training_helpers import mlp
    from ndtracker import Tracker

    model = mlp()
    tracker = Tracker(model, every=1, log_dir=sys.argv[1], flush_secs=3600, detect=False)
    for i in range(10**9):
        model(torch.randn(8, 12)).sum().backward()
        tracker.step()
        if i == 20:
            open(sys.argv[2], "w").close()
""")


def test_sigterm_flushes_a_tracker_like_close(tmp_path):
    ready = tmp_path / "ready"
    tests = str(Path(__file__).resolve().parent)
    child = subprocess.Popen([sys.executable, "-c", TRACKED_CHILD, str(tmp_path / "run"), str(ready), tests])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ready.exists():
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM
    frame = ndtracker.load(tmp_path / "run")
    steps = sorted(frame.step.unique())
    assert len(steps) > 20 and steps == list(range(len(steps)))  # before: nothing (flush_secs=3600)
    assert (frame.groupby("step").size() == 3 * 2).all()
