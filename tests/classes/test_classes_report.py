"""The report's class-geometry and condensation tables and page sections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker, detect
from ndtracker.reports.classes import PHASE_COLUMNS, class_phases, depth_profile


def train(log_dir, labels: bool, condensation: bool, steps: int = 40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with Tracker(model, every=2, log_dir=str(log_dir), condensation=condensation, detect=False) as tracker:
        for _ in range(steps):
            x = torch.randn(32, 6)
            y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss, labels=y if labels else None)


def test_report_carries_class_tables_and_draws_their_sections(tmp_path):
    train(tmp_path, labels=True, condensation=True)
    rep = ndtracker.report(tmp_path)
    assert list(rep.classes["layer"].unique()) == ["0", "2"] and len(rep.classes) == 40
    assert set(rep.condensation["layer"]) == {"0", "2"} and rep.condensation["condensation"].notna().all()
    assert list(rep.class_phases.columns) == PHASE_COLUMNS
    assert {"nc1", "radius", "condensation", "directions"} <= set(rep.class_phases["statistic"])
    page = rep.to_html(tmp_path / "page.html")
    assert "<h2>Class geometry</h2>" in page and "<h2>Condensation</h2>" in page and "NC1" in page


def test_report_without_labels_or_condensation_has_empty_tables_and_no_sections(tmp_path):
    train(tmp_path, labels=False, condensation=False, steps=10)
    rep = ndtracker.report(tmp_path)
    assert rep.classes.empty and rep.condensation.empty and rep.class_phases.empty
    page = rep.to_html()
    assert "Class geometry" not in page and "Condensation" not in page


def test_class_phases_use_the_detector_on_each_layer_and_statistic():
    steps = np.arange(0, 200, 2)
    falling = np.r_[np.linspace(10, 1, 50), np.ones(50)]
    frame = pd.DataFrame({"step": np.r_[steps, steps], "layer": ["a"] * 100 + ["b"] * 100,
                          "nc1": np.r_[falling, np.full(100, 3.0)]})  # fmt: skip
    phases = class_phases(frame, ["nc1"])
    for layer, values in (("a", falling), ("b", np.full(100, 3.0))):
        want = detect.label_phases(values)
        got = phases[phases.layer == layer]
        assert list(got["kind"]) == [str(p.kind) for p in want]
        assert list(got["start_step"]) == [int(steps[p.start]) for p in want]
        assert list(got["end_step"]) == [int(steps[p.stop - 1]) for p in want]


def test_depth_profile_picks_steps_where_every_layer_has_nc1():
    frame = pd.DataFrame({"step": [0, 0, 2, 4, 4, 6, 6], "layer": ["a", "b", "a", "a", "b", "a", "b"],
                          "nc1": [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25]})  # fmt: skip
    profile = depth_profile(frame, ["a", "b"], count=2)
    assert list(profile.index) == [0, 6] and list(profile.columns) == ["a", "b"]
    assert profile.loc[6].tolist() == pytest.approx([0.5, 0.25])


def test_a_constant_zero_series_has_no_phases_and_does_not_stop_the_report():
    frame = pd.DataFrame({"step": np.arange(0, 40, 2), "layer": ["a"] * 20, "condensation": np.zeros(20)})
    phases = class_phases(frame, ["condensation"])  # the detector may raise on it: caught
    assert list(phases.columns) == PHASE_COLUMNS and set(phases["kind"]) <= {"stabilization"}
