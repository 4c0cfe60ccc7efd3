"""Tests of ndtracker.store: round trips, runs, damaged input, log directories, sorting."""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_rows import empty_metrics, expected, grid, parts, row, write

from ndtracker import store
from ndtracker.store import layout
from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError


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
    frame = store.load(tmp_path, run_id="all")
    assert frame["run_id"].tolist() == [first.run_id] * 8 + [second.run_id] * 8


def test_run_id_selects_one_run_and_unknown_ids_are_listed(tmp_path):
    first = write(tmp_path, [grid([0])])
    second = write(tmp_path, [grid([0, 5])])
    assert len(store.load(tmp_path, run_id=first.run_id)) == 4
    assert set(store.load(tmp_path, run_id=second.run_id)["run_id"]) == {second.run_id}
    with pytest.raises(RunNotFoundError, match=f"run_id='nope'.*{first.run_id}, {second.run_id}"):
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
    assert len(store.load(tmp_path, run_id="all")) == 8
    assert store.load(tmp_path, run_id=second.run_id)["step"].tolist() == [5] * 4
    assert store.load(tmp_path, run_id=first.run_id)["step"].tolist() == [0] * 4


def test_parts_without_run_json_still_load(tmp_path):
    writer = write(tmp_path, [grid([0])])
    (tmp_path / "run.json").unlink()
    assert len(store.load(tmp_path)) == 4
    assert [run["run_id"] for run in store.read_run_info(tmp_path)] == [writer.run_id]


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

    monkeypatch.setattr(layout.tempfile, "TemporaryFile", refuse)
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
