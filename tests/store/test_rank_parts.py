"""Ranks of a distributed job writing one run: own parts, own seq range, one dataset."""

from __future__ import annotations

import pyarrow.dataset as ds

from ndtracker import store
from ndtracker.store.layout import PART_NAME
from ndtracker.store.writer import RANK_SEQ_SPAN


def test_ranks_write_their_own_parts_of_one_run(tmp_path):
    first = store.RunWriter(tmp_path, run_info={"model": "Net"}, rank=0, flush_secs=60)
    second = store.RunWriter(tmp_path, run_info={}, rank=1, run_id=first.run_id, flush_secs=60)
    for step in range(20):  # enough flushes for a compaction of each rank's parts
        for rank, writer in enumerate((first, second)):
            writer.append([{"step": step, "layer": "fc", "space": "weight", "stable_rank": rank + step}])
            writer.flush()
    second.close()
    first.close()
    frame = store.load(tmp_path)
    assert len(frame) == 40 and frame.groupby("rank").size().to_dict() == {0: 20, 1: 20}
    assert (frame.stable_rank == frame["rank"] + frame.step).all()
    seqs = {int(m.group(2)) // RANK_SEQ_SPAN for p in (tmp_path / "metrics").iterdir() if (m := PART_NAME.match(p.name))}
    assert seqs == {0, 1}
    assert ds.dataset(str(tmp_path / "metrics"), format="parquet").count_rows() == 40
    assert [run["run_id"] for run in store.read_run_info(tmp_path)] == [first.run_id]  # one entry
