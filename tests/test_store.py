"""Tests of ndtracker.store: round trips, the on-disk layout, crash safety, faults, damaged input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndtracker import store
from ndtracker import writer as writing
from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError

DTYPES = {
    "run_id": "str", "step": "int64", "layer": "str", "space": "str", "stable_rank": "float64",
    "participation_ratio": "float64", "effective_rank": "float64", "energy90": "Int64",
    "rows": "int64", "cols": "int64", "estimator": "str", "loss": "float64", "wall_time": "float64",
    "status": "str",
}  # fmt: skip


def row(step: int, layer: str = "fc", space: str = "activation", **values) -> dict:
    """Return a complete metrics row; ``values`` override the defaults."""
    base = {
        "step": step, "layer": layer, "space": space, "stable_rank": 1.5 + step,
        "participation_ratio": 2.5, "effective_rank": 3.5, "energy90": 4, "rows": 64, "cols": 32,
        "estimator": "exact", "loss": 0.25, "wall_time": 1.7e9 + step, "status": "ok",
    }  # fmt: skip
    return {**base, **values}


def grid(steps, layers=("a", "b"), spaces=("activation", "weight")) -> list[dict]:
    return [row(s, layer, space) for s in steps for layer in layers for space in spaces]


def expected(rows: list[dict], run_id: str) -> pd.DataFrame:
    """Build the frame `load` must return for ``rows`` of one run."""
    ordered = sorted(rows, key=lambda r: (r["step"], r["layer"], r["space"]))
    frame = pd.DataFrame([{**{k: None for k in DTYPES}, **r, "run_id": run_id} for r in ordered])
    return frame[list(DTYPES)].astype(DTYPES) if len(frame) else empty_metrics()


def empty_metrics() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in DTYPES.items()})


def write(folder, chunks: list[list[dict]], **options) -> store.RunWriter:
    """Write each chunk as one flush and close the writer."""
    writer = store.RunWriter(folder, run_info={"model": "Net"}, **options)
    for chunk in chunks:
        writer.append(chunk)
        writer.flush()
    writer.close()
    return writer


def parts(folder: Path, table: str = "metrics") -> list[str]:
    return sorted(os.listdir(folder / table))


def no_duplicates(frame: pd.DataFrame) -> bool:
    return not frame.duplicated(["run_id", "step", "layer", "space"]).any()


# ------------------------------------------------------------------------------ round trips


def test_round_trip_keeps_values_nulls_and_dtypes(tmp_path):
    rows = grid(range(0, 30, 5))
    rows[1].update(energy90=None, loss=None, stable_rank=float("nan"), status="nonfinite")
    del rows[2]["participation_ratio"]  # a missing key is stored as null
    writer = write(tmp_path, [rows[:7], rows[7:]])
    frame = store.load(tmp_path)
    pd.testing.assert_frame_equal(frame, expected(rows, writer.run_id))
    assert str(frame["energy90"].dtype) == "Int64" and frame["energy90"].isna().sum() == 1
    assert list(frame.columns) == list(store.METRICS_SCHEMA.names)


def test_rows_are_sorted_by_step_layer_space(tmp_path):
    rows = [row(10, "z"), row(0, "b", "weight"), row(0, "b"), row(5, "a"), row(0, "a")]
    write(tmp_path, [rows[:2], rows[2:]])
    frame = store.load(tmp_path)
    keys = list(zip(frame.step, frame.layer, frame.space))
    assert keys == sorted(keys)


def test_events_round_trip_with_nullable_direction(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    jump = {"step": 5, "layer": "fc", "space": "weight", "metric": "stable_rank", "kind": "jump",
            "direction": -1, "size": 2.0, "z": 6.5, "wall_time": 1.0}  # fmt: skip
    phase = {"step": 9, "layer": "fc", "space": "weight", "metric": "stable_rank", "kind": "phase",
             "phase": "collapse", "wall_time": 2.0}  # fmt: skip
    writer.append_events([phase, jump])
    writer.close()
    events = store.load(tmp_path, events=True)
    assert list(events.columns) == list(store.EVENTS_SCHEMA.names)
    assert str(events["direction"].dtype) == "Int8"
    assert events["direction"].tolist()[0] == -1 and events["direction"].isna().tolist() == [False, True]
    assert events["phase"].isna().tolist() == [True, False] and events["kind"].tolist() == ["jump", "phase"]


def test_events_table_is_empty_with_columns_when_no_event(tmp_path):
    write(tmp_path, [grid([0])])
    events = store.load(tmp_path, events=True)
    assert len(events) == 0 and list(events.columns) == list(store.EVENTS_SCHEMA.names)


def test_values_that_do_not_fit_their_column_become_null(tmp_path):
    rows = [row(0, energy90=float("nan"), loss="n/a", rows=7.0, extra="ignored"), row(5, energy90=2**70)]
    write(tmp_path, [rows])
    frame = store.load(tmp_path)
    assert frame["energy90"].isna().all() and math.isnan(frame["loss"][0]) and frame["rows"][0] == 7
    assert frame["stable_rank"].tolist() == [1.5, 6.5]


def test_columns_selects_and_orders(tmp_path):
    write(tmp_path, [grid([0, 5])])
    frame = store.load(tmp_path, columns=["stable_rank", "step"])
    assert list(frame.columns) == ["stable_rank", "step"] and frame["step"].tolist() == [0] * 4 + [5] * 4
    with pytest.raises(ValueError, match=r"columns=\['nope'\].*stable_rank"):
        store.load(tmp_path, columns=["nope"])


LAYERS = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=6)
FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
ROW = st.fixed_dictionaries({
    "step": st.integers(0, 10**9), "layer": LAYERS, "space": st.sampled_from(["activation", "weight"]),
    "stable_rank": FLOATS, "participation_ratio": FLOATS, "effective_rank": FLOATS,
    "energy90": st.one_of(st.none(), st.integers(0, 2**40)), "rows": st.integers(0, 2**40),
    "cols": st.integers(0, 2**40), "estimator": st.sampled_from(["exact", "streaming"]), "loss": FLOATS,
    "wall_time": st.floats(0, 4e9), "status": st.sampled_from(["ok", "nonfinite", "empty", "failed"]),
})  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=40, unique_by=lambda r: (r["step"], r["layer"], r["space"])),
       cut=st.integers(0, 40))  # fmt: skip
def test_load_of_write_is_identity(rows, cut):
    with tempfile.TemporaryDirectory() as folder:
        writer = write(folder, [rows[:cut], rows[cut:]])
        pd.testing.assert_frame_equal(store.load(folder), expected(rows, writer.run_id))


# ------------------------------------------------------------------------------ runs


def test_second_run_gets_its_own_id_and_leaves_the_first_alone(tmp_path):
    first = write(tmp_path, [grid([0, 5])])
    before = {name: (tmp_path / "metrics" / name).read_bytes() for name in parts(tmp_path)}
    second = write(tmp_path, [grid([0]), grid([5])])
    assert first.run_id != second.run_id
    assert all((tmp_path / "metrics" / name).read_bytes() == data for name, data in before.items())
    info = store.read_run_info(tmp_path)
    assert [run["run_id"] for run in info] == [first.run_id, second.run_id]
    assert info[0]["model"] == "Net" and info[0]["started"] < info[1]["started"]
    assert json.loads((tmp_path / "run.json").read_text())["schema_version"] == store.SCHEMA_VERSION
    frame = store.load(tmp_path)
    assert frame["run_id"].tolist() == [first.run_id] * 8 + [second.run_id] * 8


def test_run_id_selects_one_run_and_unknown_ids_are_listed(tmp_path):
    first = write(tmp_path, [grid([0])])
    second = write(tmp_path, [grid([0, 5])])
    assert len(store.load(tmp_path, run_id=first.run_id)) == 4
    assert set(store.load(tmp_path, run_id=second.run_id)["run_id"]) == {second.run_id}
    with pytest.raises(ValueError, match=f"run_id='nope'.*{first.run_id}, {second.run_id}"):
        store.load(tmp_path, run_id="nope")


def test_run_ids_sort_by_start_time(tmp_path):
    ids = [write(tmp_path, []).run_id for _ in range(3)]
    assert ids[0][:15] <= ids[1][:15] <= ids[2][:15] and len(set(ids)) == 3


def test_run_without_parts_loads_as_empty_frame_with_dtypes(tmp_path):
    write(tmp_path, [])
    frame = store.load(tmp_path)
    assert len(frame) == 0
    assert frame.dtypes.astype(str).to_dict() == empty_metrics().dtypes.astype(str).to_dict()


def test_missing_or_empty_directory_raises_run_not_found(tmp_path):
    with pytest.raises(RunNotFoundError, match="nowhere.*does not exist"):
        store.load(tmp_path / "nowhere")
    with pytest.raises(RunNotFoundError, match="holds no ndtracker run"):
        store.load(tmp_path)
    with pytest.raises(RunNotFoundError, match="holds no ndtracker run"):
        store.read_run_info(tmp_path)


def test_a_renamed_part_is_read_and_filtered_by_its_run_id_column(tmp_path):
    first = write(tmp_path, [grid([0])])
    second = write(tmp_path, [grid([5])])
    (tmp_path / "metrics" / parts(tmp_path)[0]).rename(tmp_path / "metrics" / "copied.parquet")
    assert len(store.load(tmp_path)) == 8
    assert store.load(tmp_path, run_id=second.run_id)["step"].tolist() == [5] * 4
    assert store.load(tmp_path, run_id=first.run_id)["step"].tolist() == [0] * 4


def test_parts_without_run_json_still_load(tmp_path):
    writer = write(tmp_path, [grid([0])])
    (tmp_path / "run.json").unlink()
    assert len(store.load(tmp_path)) == 4
    assert [run["run_id"] for run in store.read_run_info(tmp_path)] == [writer.run_id]


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
    monkeypatch.setattr(writing, "FANOUT", 4)
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    chunks = [grid([step]) for step in range(100)]
    for chunk in chunks:
        writer.append(chunk)
        writer.flush()
    assert len(parts(tmp_path)) <= 3 * 4  # at most FANOUT - 1 parts per level
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))
    writer.close()
    assert len(parts(tmp_path)) == 1
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))


def test_a_failed_merge_warns_once_and_is_retried_at_close(tmp_path, monkeypatch):
    monkeypatch.setattr(writing, "FANOUT", 2)
    merge = writing._merge
    monkeypatch.setattr(writing, "_merge", lambda *args: failing_write_table())
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    with pytest.warns(RuntimeWarning, match="could not merge the parts.*tries again at close") as caught:
        for step in range(6):
            writer.append(grid([step]))
            writer.flush()
    assert len(caught) == 1 and len(parts(tmp_path)) == 6
    monkeypatch.setattr(writing, "_merge", merge)
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
    monkeypatch.setattr(writing, "FANOUT", 2)
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


# ------------------------------------------------------------------------------ damaged input


def test_truncated_and_foreign_parts_are_skipped_with_a_warning(tmp_path):
    write(tmp_path, [grid([0]), grid([5])])
    first = tmp_path / "metrics" / parts(tmp_path)[0]
    data = first.read_bytes()
    truncated = tmp_path / "metrics" / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "metrics" / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.warns(RuntimeWarning) as caught:
        frame = store.load(tmp_path)
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2
    assert "foreign.parquet" in messages[0] and "not an ndtracker part" in messages[0]
    assert "truncated.parquet" in messages[1] and "not a readable Parquet file" in messages[1]
    assert len(frame) == 8


def test_a_part_with_a_newer_schema_raises_schema_error(tmp_path):
    write(tmp_path, [grid([0])])
    schema = store.METRICS_SCHEMA.with_metadata({"ndtracker_schema_version": "2"})
    table = pa.Table.from_pylist([{**row(5), "run_id": "x"}], schema=schema)
    pq.write_table(table, tmp_path / "metrics" / "newer.parquet")
    with pytest.raises(SchemaError, match=r"newer\.parquet was written with schema version 2.*newer than 1"):
        store.load(tmp_path)


def test_a_newer_run_json_raises_schema_error(tmp_path):
    write(tmp_path, [grid([0])])
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 9, "runs": []}))
    with pytest.raises(SchemaError, match=r"run\.json has schema_version 9, newer than 1"):
        store.load(tmp_path)
    with pytest.raises(SchemaError, match="schema_version 9"):
        store.RunWriter(tmp_path, run_info={})


def test_a_damaged_run_json_warns_on_read_and_is_never_overwritten(tmp_path):
    write(tmp_path, [grid([0])])
    (tmp_path / "run.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match=r"ignoring .*run\.json: not a valid"):
        assert len(store.load(tmp_path)) == 4
    with pytest.raises(NdtrackerError, match=r"run\.json is not a valid ndtracker run file.*move it away"):
        store.RunWriter(tmp_path, run_info={})
    assert (tmp_path / "run.json").read_text() == "{not json"


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


# ------------------------------------------------------------------------------ validate_log_dir


def test_validate_log_dir_creates_missing_directories(tmp_path):
    assert store.validate_log_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_validate_log_dir_rejects_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"log_dir=.*file\.txt' is a file, not a directory"):
        store.validate_log_dir(path)
    with pytest.raises(ValueError, match=r"file\.txt/run' cannot be created or written"):
        store.validate_log_dir(path / "run")


def test_validate_log_dir_reports_a_failed_write_probe(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"log_dir=.*cannot be created or written \(\[Errno 13\] Permission"):
        store.validate_log_dir(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_validate_log_dir_rejects_an_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match=r"locked' cannot be created or written.*you can write"):
            store.validate_log_dir(locked)
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------ sorting helpers


def test_sort_falls_back_to_lexsort_when_keys_overflow(tmp_path):
    rows = [row(2**62, "b"), row(0, "a"), row(2**62 - 5, "a")]
    write(tmp_path, [rows])
    assert store.load(tmp_path)["step"].tolist() == [0, 2**62 - 5, 2**62]


def test_read_table_keeps_the_written_order_unless_sorted(tmp_path):
    rows = [row(10, "z"), row(0, "b", "weight"), row(0, "b"), row(5, "a"), row(0, "a")]
    write(tmp_path, [rows[:2], rows[2:]])
    written = store.read_table(tmp_path, columns=["step", "layer", "space"], sort=False)
    keys = list(zip(*(written[name].to_pylist() for name in ("step", "layer", "space"))))
    assert keys == [(0, "b", "weight"), (10, "z", "activation"), (0, "a", "activation"),
                    (0, "b", "activation"), (5, "a", "activation")]  # each flush sorted, in turn
    assert pa.types.is_dictionary(written.schema.field("layer").type) and written.column_names == ["step", "layer", "space"]
    frame = store.read_table(tmp_path).to_pandas()
    pd.testing.assert_frame_equal(frame.astype(store.load(tmp_path).dtypes.to_dict()), store.load(tmp_path))


def test_sort_puts_null_layers_last_and_orders_an_unsorted_dictionary(tmp_path):
    rows = [row(0, "b"), row(0, "a"), row(0, None), row(0, "c")]  # dictionary order b, a, c
    write(tmp_path, [rows[:1], rows[1:]])
    layers = store.load(tmp_path)["layer"]
    assert layers.iloc[:3].tolist() == ["a", "b", "c"] and pd.isna(layers.iloc[3])


def test_many_rows_round_trip_through_several_parts(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [grid(rng.permutation(40)[:10] + 40 * k, layers=("x", "y", "z")) for k in range(6)]
    writer = write(tmp_path, chunks)
    pd.testing.assert_frame_equal(store.load(tmp_path), expected(sum(chunks, []), writer.run_id))
