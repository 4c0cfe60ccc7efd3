"""Tests of ndtracker.store.writer: flushing, atomic parts, compaction, crash safety and faults."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from store_rows import empty_metrics, expected, grid, no_duplicates, parts, write

from ndtracker import store
from ndtracker.store import compaction


# ------------------------------------------------------------------------------ flushing


def test_background_thread_flushes_without_being_asked(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=0.05)
    writer.append(grid([0]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(store.load(tmp_path)) < 4:
        time.sleep(0.02)
    assert len(store.load(tmp_path)) == 4
    writer.close()


def test_close_is_idempotent_and_append_after_close_raises(tmp_path):
    writer = write(tmp_path, [grid([0])])
    writer.close()
    writer.flush()
    with pytest.raises(ValueError, match="is closed"):
        writer.append(grid([5]))
    assert len(store.load(tmp_path)) == 4


def test_a_collected_writer_still_writes_its_rows(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    writer.append(grid([0]))
    thread = writer._run.thread
    del writer  # the finalizer stops the thread, which does the final flush
    thread.join(timeout=30)
    assert len(store.load(tmp_path)) == 4 and not thread.is_alive()


def test_option_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="flush_secs must be a positive number.*got 0"):
        store.RunWriter(tmp_path, run_info={}, flush_secs=0)
    with pytest.raises(ValueError, match="max_buffer_rows must be a positive integer.*got 2.5"):
        store.RunWriter(tmp_path, run_info={}, max_buffer_rows=2.5)
    with pytest.raises(TypeError, match="run_info must be a mapping, got list"):
        store.RunWriter(tmp_path, run_info=[])


# ------------------------------------------------------------------------------ atomic parts


def test_no_temporary_files_are_left_and_planted_ones_are_ignored(tmp_path):
    write(tmp_path, [grid([0]), grid([5])])
    assert not [name for name in parts(tmp_path) if name.startswith(".") or name.endswith(".tmp")]
    name = parts(tmp_path)[0]
    (tmp_path / "metrics" / f".{name}.999-1.tmp").write_bytes(b"PAR1 half written")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store.load(tmp_path)) == 8


def test_parts_are_plain_parquet_for_pandas_and_pyarrow(tmp_path):
    write(tmp_path, [grid([0]), grid([5])])
    write(tmp_path, [grid([0])])
    assert len(pd.read_parquet(tmp_path / "metrics")) == 12
    table = ds.dataset(tmp_path / "metrics", format="parquet").to_table()
    assert table.schema.metadata[b"ndtracker_schema_version"] == b"1"
    assert table.schema.remove_metadata().equals(store.METRICS_SCHEMA.remove_metadata())


def test_parts_are_readable_by_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    write(tmp_path, [grid([0]), grid([5])])
    query = f"SELECT count(*), sum(step) FROM '{tmp_path / 'metrics'}/*.parquet'"
    assert duckdb.sql(query).fetchall() == [(8, 20)]


# ------------------------------------------------------------------------------ compaction


def test_compaction_leaves_few_files_and_every_row_once(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "FANOUT", 4)
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    chunks = [grid([step]) for step in range(100)]
    for chunk in chunks:
        writer.append(chunk)
        writer.flush()
    assert writer._run.compactor.settle()  # merges run on their own thread
    assert len(parts(tmp_path)) <= 3 * 4  # at most FANOUT - 1 parts per level
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))
    writer.close()
    assert len(parts(tmp_path)) == 1
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))


def test_a_failed_merge_warns_once_and_is_retried_at_close(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "FANOUT", 2)
    monkeypatch.setattr(compaction, "RETRY_SECS", 3600)  # no retry before close
    merge = compaction.merge
    monkeypatch.setattr(compaction, "merge", lambda *args: failing_write_table())
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    with pytest.warns(RuntimeWarning, match="could not merge the parts.*tries again in .* and at close") as caught:
        for step in range(6):
            writer.append(grid([step]))
            writer.flush()
            assert writer._run.compactor.settle()
    assert len(caught) == 1 and len(parts(tmp_path)) == 6
    monkeypatch.setattr(compaction, "merge", merge)
    writer.close()
    assert len(parts(tmp_path)) == 1 and len(store.load(tmp_path)) == 24


def test_crash_between_merge_and_delete_duplicates_nothing(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    chunks = [grid([step]) for step in range(5)]
    for chunk in chunks:
        writer.append(chunk)
        writer.flush()
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "metrics", saved)
    writer.close()
    merged = parts(tmp_path)
    for name in os.listdir(saved):  # as if the process died before deleting the merged parts
        shutil.copy(saved / name, tmp_path / "metrics" / name)
    half = (tmp_path / "metrics" / merged[0]).read_bytes()[:100]  # and died again, mid-merge
    (tmp_path / "metrics" / f".{merged[0]}.1-2.tmp").write_bytes(half)
    assert merged == [f"part-{writer.run_id}-000000-000004.parquet"] and len(parts(tmp_path)) == 7
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))


def test_loads_during_writes_and_compactions_never_see_a_row_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "FANOUT", 2)
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    done = threading.Event()

    def produce():
        for step in range(150):
            writer.append(grid([step], layers=("a",)))
            writer.flush()
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    seen = []
    while not done.is_set():
        frame = store.load(tmp_path) if (tmp_path / "metrics").exists() else empty_metrics()
        assert no_duplicates(frame)
        seen.append(len(frame))
    thread.join()
    writer.close()
    assert seen == sorted(seen) and len(store.load(tmp_path)) == 300


# ------------------------------------------------------------------------------ faults


def failing_write_table(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_disk_full_keeps_a_bounded_buffer_and_recovers(tmp_path, monkeypatch):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600, max_buffer_rows=10)
    monkeypatch.setattr(pq, "write_table", failing_write_table)
    with pytest.warns(RuntimeWarning, match=r"could not write to .*metrics.*No space left") as caught:
        for step in range(5):
            writer.append(grid([step]))  # 4 rows each: 20 rows, 10 kept
            writer.flush()
    assert len(caught) == 1
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="dropped the oldest 10 metrics rows"):
        writer.flush()
    writer.close()
    assert store.load(tmp_path)["step"].tolist() == [2, 2, 3, 3, 3, 3, 4, 4, 4, 4]


def test_a_deleted_run_directory_is_warned_about_and_recreated(tmp_path):
    run_dir = tmp_path / "run"
    writer = store.RunWriter(run_dir, run_info={"model": "Net"}, flush_secs=3600)
    writer.append(grid([0]))
    writer.flush()
    shutil.rmtree(run_dir)
    run_dir.write_text("a file where the run directory was")  # even root cannot write below it
    writer.append(grid([5]))
    with pytest.warns(RuntimeWarning, match=f"could not write to {run_dir}"):
        writer.flush()
        writer.flush()
    run_dir.unlink()
    with pytest.warns(RuntimeWarning, match="restored the entry of run"):
        writer.flush()
    writer.close()
    assert store.load(run_dir)["step"].tolist() == [5] * 4
    assert [run["run_id"] for run in store.read_run_info(run_dir)] == [writer.run_id]


def test_rows_that_cannot_be_written_by_close_are_reported_lost(tmp_path, monkeypatch):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    writer.append(grid([0]))
    monkeypatch.setattr(pq, "write_table", failing_write_table)
    with pytest.warns(RuntimeWarning) as caught:
        writer.close()
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2 and "No space left" in messages[0] and "lost 4 rows" in messages[1]


CHILD = textwrap.dedent("""
    import sys, time
    from ndtracker.store import RunWriter

    writer = RunWriter(sys.argv[1], run_info={}, flush_secs=0.2)
    with open(sys.argv[2], "w") as progress:
        for step in range(10**9):
            writer.append([{"step": step, "layer": "fc", "space": "weight", "stable_rank": 1.0}])
            progress.write(f"{step} {time.time()}\\n")
            progress.flush()
            time.sleep(0.002)
""")


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path):
    progress = tmp_path / "progress.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "run"), str(progress)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (progress.exists() and progress.read_text()):
            time.sleep(0.05)
        time.sleep(1.5)
    finally:
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
        child.wait()
    lines = progress.read_text().split("\n")[:-1]  # the last line may be cut short by the kill
    marks = [(int(step), float(at)) for step, at in (line.split() for line in lines)]
    # one flush interval, plus slack for the writer thread of a child on a busy machine
    old = [step for step, at in marks if at < killed_at - 0.2 - 0.8]
    steps = store.load(tmp_path / "run")["step"].tolist()
    assert steps == list(range(len(steps)))  # no hole, no duplicate
    assert old and len(steps) > max(old)
