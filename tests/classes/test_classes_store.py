"""The classes table and the condensation columns in the store: load(table=...), older parts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ndtracker import store
from ndtracker.store.schema import CLASSES_SCHEMA, METRICS_SCHEMA
from store_rows import row


def classes_row(step: int, layer: str = "fc", **values) -> dict:
    base = {"step": step, "layer": layer, "space": "activation", "classes": 3, "skipped_classes": 1,
            "nc1": 0.5, "radius": 1.5, "dimension": 2.5, "center_alignment": 0.1, "axes_alignment": 0.2,
            "ncc_accuracy": 0.9, "rows": 30, "status": "ok", "wall_time": 1.7e9}  # fmt: skip
    return {**base, **values}


def test_classes_rows_round_trip_sorted(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    writer.append_classes([classes_row(2, "b"), classes_row(1, "b"), classes_row(1, "a", classes=None)])
    writer.close()
    frame = store.load(tmp_path, table="classes")
    assert list(frame.columns) == CLASSES_SCHEMA.names
    assert list(zip(frame.step, frame.layer)) == [(1, "a"), (1, "b"), (2, "b")]
    assert frame["classes"].isna().tolist() == [True, False, False] and str(frame["classes"].dtype) == "Int64"
    assert store.read_table(tmp_path, table="classes", columns=["nc1"]).num_rows == 3


def test_table_names_the_metrics_and_events_too(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    writer.append([row(0)])
    writer.close()
    assert len(store.load(tmp_path, table="metrics")) == 1
    assert len(store.load(tmp_path, table="events")) == 0 == len(store.load(tmp_path, events=True))


def test_unknown_table_and_conflicting_events_raise(tmp_path):
    store.RunWriter(tmp_path, run_info={}).close()
    with pytest.raises(ValueError, match=r"table must be one of \('metrics', 'events', 'similarity', 'classes'\)"):
        store.load(tmp_path, table="similarity_of_everything")
    with pytest.raises(ValueError, match="'events' with events=True"):
        store.load(tmp_path, events=True, table="classes")


def test_parts_written_before_the_condensation_columns_read_them_as_null(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    writer.close()
    old = pa.schema([f for f in METRICS_SCHEMA if f.name not in ("condensation", "directions")],
                    metadata=METRICS_SCHEMA.metadata)  # fmt: skip
    values = {**row(3), "run_id": writer.run_id}
    table = pa.Table.from_pylist([values], schema=old)
    (tmp_path / "metrics").mkdir(exist_ok=True)
    pq.write_table(table, tmp_path / "metrics" / f"part-{writer.run_id}-000000.parquet")
    frame = store.load(tmp_path)
    assert frame["stable_rank"].tolist() == [4.5] and frame[["condensation", "directions"]].isna().all().all()
