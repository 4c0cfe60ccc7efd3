"""The report's new tables and sections, end to end from a tracked run."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import ndtracker
from ndtracker import Tracker
from ndtracker.reports.science_views import heatmap_steps, profile_steps


def _deep_run(log_dir, **options):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(12, 12), nn.Tanh())], nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 12)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    with Tracker(model, every=2, log_dir=str(log_dir), **options) as tracker:
        for _ in range(40):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss, labels=y)
    return ndtracker.report(log_dir)


def _text(rep) -> str:
    buffer = io.StringIO()
    rep.render(Console(file=buffer, width=120))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return _deep_run(tmp_path_factory.mktemp("full"), gradients=True, linear_probes=True, similarity=True)


def test_every_option_fills_its_table(full):
    assert set(full.tunnel.space) == {"activation", "weight"} and len(full.tunnel) == 40
    assert full.tunnel.probe_saturation_index[full.tunnel.space == "activation"].notna().all()
    assert full.correlations.grad_samples.min() == 20 and full.correlations.samples.min() == 20
    assert len(full.similarity) == 20 * 6 * 7 // 2
    assert {"step", "layer_a", "layer_b", "cka"} <= set(full.similarity.columns)


def test_linear_probes_alone_give_the_probe_saturation(tmp_path):
    rep = _deep_run(tmp_path, linear_probes=True, spaces="activation", detect=False)
    assert rep.tunnel.probe_saturation_index.notna().all()


def test_terminal_and_page_show_the_sections(full):
    text = _text(full)
    assert "depth (stable_rank)" in text and "correlation of stable_rank" in text
    page = full.to_html()
    for title in ("<h2>Depth</h2>", "<h2>Layer similarity</h2>", "<h2>Correlations</h2>"):
        assert title in page
    assert page.count("<svg") >= 5


def test_a_default_run_shows_no_new_section_and_has_empty_tables(tmp_path):
    rep = _deep_run(tmp_path)
    assert len(rep.similarity) == 0 and rep.correlations.grad_samples.eq(0).all()
    assert rep.tunnel.probe_saturation_index.isna().all()
    assert rep.correlations.samples.eq(20).all()  # the loss is always logged
    assert "correlation of" not in _text(rep)
    page = rep.to_html()
    assert "<h2>Layer similarity</h2>" not in page and "<h2>Correlations</h2>" not in page


def test_chosen_steps():
    steps = np.arange(0, 100, 10)
    assert profile_steps(steps, 35) == [0, 20, 35, 90]
    assert profile_steps(steps, None) == [0, 20, 90]
    import pandas as pd

    similarity = pd.DataFrame({"step": [0, 0, 10, 20, 30]})
    assert heatmap_steps(similarity, 12) == [("first step", 0), ("tunnel formed", 10), ("last step", 30)]
