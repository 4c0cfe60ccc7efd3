"""The distributed options without torch.distributed: checked at construction, otherwise inert."""

from __future__ import annotations

import pytest
import torch

from ndtracker import Tracker, load


def test_bad_distributed_options_raise_at_construction(tmp_path):
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="ranks must be 'all' or the rank that writes the run"):
        Tracker(model, log_dir=str(tmp_path), ranks="some")
    with pytest.raises(ValueError, match="ranks must be"):
        Tracker(model, log_dir=str(tmp_path), ranks=-1)
    with pytest.raises(ValueError, match=r"activations must be one of \('global', 'local'\), got 'mine'"):
        Tracker(model, log_dir=str(tmp_path), activations="mine")


def test_a_single_process_logs_a_null_rank(tmp_path):
    model = torch.nn.Linear(4, 3)
    with Tracker(model, every=1, log_dir=str(tmp_path), ranks="all", detect=False) as tracker:
        model(torch.randn(8, 4)).sum().backward()
        tracker.step()
    frame = load(tmp_path)
    assert len(frame) == 2 and frame["rank"].isna().all() and str(frame["rank"].dtype) == "Int64"
