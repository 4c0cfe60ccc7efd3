"""The store's new parts: the similarity table, the added metrics columns, ``load(table=...)``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ndtracker
from ndtracker import store
from store_rows import row


def _pair(step, a, b, cka=0.5):
    return {"step": step, "layer_a": a, "layer_b": b, "space": "activation", "cka": cka, "rows": 32, "status": "ok"}


def test_similarity_rows_round_trip_sorted(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={"model": "Net"})
    writer.append([row(0)])
    writer.append_similarity([_pair(5, "b", "b", 1.0), _pair(0, "a", "b"), _pair(0, "a", "a", 1.0)])
    writer.flush()
    writer.append_similarity([_pair(2, "a", "b", 0.25)])
    writer.close()
    frame = ndtracker.load(tmp_path, table="similarity")
    assert list(frame.columns) == list(store.SIMILARITY_SCHEMA.names)
    assert frame[["step", "layer_a", "layer_b", "cka"]].values.tolist() == [
        [0, "a", "a", 1.0], [0, "a", "b", 0.5], [2, "a", "b", 0.25], [5, "b", "b", 1.0],
    ]  # fmt: skip
    assert len(ndtracker.load(tmp_path)) == 1 and len(ndtracker.load(tmp_path, table="metrics")) == 1


def test_events_flag_still_works_and_agrees_with_table(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    writer.append_events([{"step": 3, "layer": "a", "space": "activation", "kind": "jump"}])
    writer.close()
    assert ndtracker.load(tmp_path, events=True).equals(ndtracker.load(tmp_path, table="events"))
    assert ndtracker.load(tmp_path, events=True, table="events").step.tolist() == [3]


@pytest.mark.parametrize("options", [{"table": "nope"}, {"table": "similarity", "events": True}])
def test_unknown_or_contradictory_table_raises(tmp_path, options):
    store.RunWriter(tmp_path, run_info={}).close()
    with pytest.raises(ValueError, match="table must be one of"):
        ndtracker.load(tmp_path, **options)


def test_parts_written_before_the_added_columns_read_them_as_null(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={})
    writer.append([row(0, grad_norm=2.0)])
    writer.close()
    old = store.METRICS_SCHEMA.remove_metadata()
    old = pa.schema([f for f in old if f.name not in ("grad_norm", "probe_accuracy")],
                    metadata=store.METRICS_SCHEMA.metadata)  # fmt: skip
    table = pa.Table.from_pylist([{**row(1), "run_id": writer.run_id}], schema=old)
    pq.write_table(table, tmp_path / "metrics" / "legacy.parquet")
    frame = ndtracker.load(tmp_path)
    assert frame.step.tolist() == [0, 1]
    assert frame.grad_norm.iloc[0] == 2.0 and frame.grad_norm.isna().iloc[1]
    assert frame.probe_accuracy.isna().all()
