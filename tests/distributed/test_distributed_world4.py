"""Four gloo processes: FSDP2 with empty shards, a 2 x 2 (data x tensor) mesh, DDP with no_sync."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_workers import run_scenarios

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

SCENARIOS = ["fsdp", "mesh_2d", "ddp"]


def test_four_ranks_and_a_two_by_two_mesh_measure_the_whole_job_exactly(tmp_path):
    mp.spawn(run_scenarios, args=(4, str(tmp_path), SCENARIOS), nprocs=4, join=True)
    figures = json.loads((tmp_path / "figures-4.json").read_text())
    print("worst relative error per scenario:", figures)
    for name in SCENARIOS:
        worst = figures[name]
        assert max(worst["stable_rank"], worst["participation_ratio"]) <= 1e-6, (name, worst)
