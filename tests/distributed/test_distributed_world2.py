"""Two gloo processes: FSDP2, DDP with no_sync, tensor parallelism, ranks="all", a failing rank, a
labelled probe (one that fails its check on one rank raises on both).

One spawn runs every scenario of :mod:`dist_workers` (a spawn costs tens of seconds here); each
scenario asserts inside the processes, so a failure surfaces as the spawn's exception.
"""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_workers import run_scenarios

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

SCENARIOS = ["fsdp", "ddp", "tensor_parallel", "all_ranks", "failure", "labelled_probe"]


def test_two_ranks_measure_the_whole_job_exactly(tmp_path):
    mp.spawn(run_scenarios, args=(2, str(tmp_path), SCENARIOS), nprocs=2, join=True)
    figures = json.loads((tmp_path / "figures-2.json").read_text())
    print("worst relative error per scenario:", figures)
    for name in ("fsdp", "ddp", "tensor_parallel"):
        worst = figures[name]
        assert max(worst["stable_rank"], worst["participation_ratio"]) <= 1e-6, (name, worst)
