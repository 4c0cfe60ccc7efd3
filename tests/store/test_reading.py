"""Reading a Tracker's logs safely: damaged, foreign and newer files, and a run still being written.

End to end: runs are made by the Tracker, then damaged on disk; ``load()`` must warn or raise with
the file's name, never crash half-way through a run.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import ndtracker
from ndtracker.errors import SchemaError
from ndtracker import Tracker
from training_helpers import mlp


def tracked_run(log_dir: Path, steps: int = 3, **options) -> Tracker:
    model = mlp(widths=(12, 32, 3))
    with Tracker(model, every=1, log_dir=str(log_dir), detect=False, **options) as tracker:
        for _ in range(steps):
            model(torch.randn(16, 12)).sum().backward()
            tracker.step()
    return tracker


def parts(log_dir: Path, run_id: str) -> list[Path]:
    return sorted((log_dir / "metrics").glob(f"part-{run_id}-*.parquet"))


@pytest.fixture
def two_runs(tmp_path):
    first, second = tracked_run(tmp_path), tracked_run(tmp_path, steps=2)
    return tmp_path, first.run_id, second.run_id


def test_truncated_part_is_skipped_with_a_warning_naming_it(two_runs):
    log_dir, first, second = two_runs
    [damaged] = parts(log_dir, first)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=f"skipping {damaged}: it is not a readable Parquet file"):
        df = ndtracker.load(log_dir, run_id="all")
    assert set(df.run_id) == {second} and len(df) == 2 * 2 * 2


def test_foreign_parquet_file_is_skipped_with_a_warning_naming_it(two_runs):
    log_dir, first, second = two_runs
    foreign = log_dir / "metrics" / "notes.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign)
    with pytest.warns(RuntimeWarning, match=f"skipping {foreign}: it is not an ndtracker part"):
        df = ndtracker.load(log_dir, run_id="all")
    assert len(df) == (3 + 2) * 2 * 2


def test_part_from_a_newer_schema_raises_naming_the_file(two_runs):
    log_dir, first, _ = two_runs
    [part] = parts(log_dir, first)
    table = pq.read_table(part)
    metadata = {**table.schema.metadata, b"ndtracker_schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(metadata), part)
    with pytest.raises(SchemaError, match=f"{part} was written with schema version 99.*upgrade ndtracker"):
        ndtracker.load(log_dir, run_id="all")


def test_run_file_from_a_newer_schema_raises(two_runs):
    log_dir, _, _ = two_runs
    doc = json.loads((log_dir / "run.json").read_text())
    (log_dir / "run.json").write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(SchemaError, match="run.json has schema_version 99.*upgrade ndtracker"):
        ndtracker.load(log_dir)
    with pytest.raises(SchemaError, match="schema_version 99"):
        tracked_run(log_dir)  # nor does a new run write into it


def test_damaged_run_file_still_loads_the_parts(two_runs):
    log_dir, first, second = two_runs
    (log_dir / "run.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="run.json: not a valid ndtracker run file"):
        df = ndtracker.load(log_dir, run_id="all")
    assert set(df.run_id) == {first, second}


def test_loading_while_a_tracker_writes(tmp_path):
    """Every load() during a run returns a consistent prefix of the run: complete steps, no duplicates."""
    done = threading.Event()

    def train():
        model = mlp(widths=(12, 32, 3))
        with Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=0.02, detect=False) as tracker:
            while not done.is_set():
                model(torch.randn(16, 12)).sum().backward()
                tracker.step()
                time.sleep(0.002)

    writer = threading.Thread(target=train)
    writer.start()
    sizes = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deadline = time.time() + 2.0
            while time.time() < deadline:
                try:
                    df = ndtracker.load(tmp_path)
                except ndtracker.RunNotFoundError:  # before run.json exists
                    continue
                sizes.append(len(df))
                assert not df.duplicated(["step", "layer", "space"]).any()
                assert sorted(df.step.unique()) == list(range(df.step.nunique()))
                assert len(df) == 4 * df.step.nunique()  # only whole steps
    finally:
        done.set()
        writer.join()
    assert not [w for w in caught if "skipping" in str(w.message)]
    assert len(sizes) >= 5 and sizes == sorted(sizes) and sizes[-1] > 0
    final = ndtracker.load(tmp_path)
    assert len(final) >= sizes[-1] and len(final) == 4 * final.step.nunique()
