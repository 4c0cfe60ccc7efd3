"""Several runs in one directory: never mixed silently, resumed runs read as one."""

from __future__ import annotations

import json

import pytest
import torch

import ndtracker
from ndtracker import Tracker
from ndtracker.errors import RunNotFoundError
from ndtracker.store.layout import child_runs
from ndtracker.store.runs import select_runs
from training_helpers import mlp


def train(log_dir, steps: int, start_step: int = 0, seed: int = 0):
    model = mlp(seed)
    with Tracker(model, every=1, log_dir=str(log_dir), start_step=start_step, detect=False) as tracker:
        for _ in range(steps):
            model(torch.randn(16, 12)).sum().backward()
            tracker.step(loss=1.0)
    return tracker


def run_ids(log_dir) -> list[str]:
    return [run["run_id"] for run in json.loads((log_dir / "run.json").read_text())["runs"]]


def test_load_reads_the_latest_run_and_names_the_others(tmp_path):
    train(tmp_path, 2)
    train(tmp_path, 3)
    first, second = run_ids(tmp_path)
    with pytest.warns(UserWarning, match=rf"holds 2 runs; loaded the latest run {second}; pass run_id='all' "
                      rf"for every run, or run_id=ID for one of: {first}"):
        frame = ndtracker.load(tmp_path)
    assert set(frame.run_id) == {second} and sorted(frame.step.unique()) == [0, 1, 2]
    assert set(ndtracker.load(tmp_path, run_id="all").run_id) == {first, second}
    assert set(ndtracker.load(tmp_path, run_id=first).run_id) == {first}


def test_one_run_loads_without_a_warning(tmp_path, recwarn):
    train(tmp_path, 2)
    assert len(ndtracker.load(tmp_path)) == 2 * 3 * 2
    assert not [w for w in recwarn if "holds" in str(w.message)]


def test_a_resumed_run_is_stitched_to_the_run_it_resumes(tmp_path, recwarn):
    train(tmp_path, 6)  # steps 0-5; a checkpoint at step 3, then a crash
    train(tmp_path, 4, start_step=3)  # steps 3-6 again from the checkpoint
    first, second = run_ids(tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["runs"][1]["resumes"] == first
    frame = ndtracker.load(tmp_path)
    assert not [w for w in recwarn if "holds" in str(w.message)]  # nothing left out
    steps = frame.groupby("run_id").step.agg(lambda s: sorted(set(s))).to_dict()
    assert steps == {first: [0, 1, 2], second: [3, 4, 5, 6]}  # the first run's 3-5 are superseded
    rep = ndtracker.report(tmp_path)
    assert all(list(s.steps) == list(range(7)) for s in rep.series)
    assert any(f"runs {first}, {second} stitched as one run (resumed: {second} from step 3)" in n for n in rep.notes)
    explicit = ndtracker.report(tmp_path, run_id=f"{first},{second}")
    assert all(list(s.steps) == list(range(7)) for s in explicit.series)


def test_report_refuses_to_mix_every_run(tmp_path):
    train(tmp_path, 2)
    with pytest.raises(ValueError, match="run_id='all' mixes runs"):
        ndtracker.report(tmp_path, run_id="all")


def test_unknown_ids_and_bad_types_are_named(tmp_path):
    train(tmp_path, 2)
    with pytest.raises(RunNotFoundError, match="run_id='nope' is not in"):
        ndtracker.load(tmp_path, run_id=["nope"])
    with pytest.raises(TypeError, match="run_id must be a run id, a list of run ids, 'all' or None, got 3"):
        ndtracker.load(tmp_path, run_id=3)


def test_a_resume_link_cycle_does_not_loop():
    runs = [{"run_id": "a", "started": "1", "resumes": "b"}, {"run_id": "b", "started": "2", "resumes": "a"}]
    assert select_runs(runs, None, "dir").run_ids == ["a", "b"]


def test_child_runs_lists_run_folders(tmp_path):
    train(tmp_path / "exp2", 1)
    train(tmp_path / "exp1", 1)
    (tmp_path / "notes").mkdir()
    assert child_runs(tmp_path) == ["exp1", "exp2"]


def test_a_parent_folder_of_runs_lists_them(tmp_path):
    train(tmp_path / "exp1", 1)
    with pytest.raises(RunNotFoundError, match=r"holds no ndtracker run .*the runs below it are in: .*exp1; pass one of them"):
        ndtracker.load(tmp_path)
