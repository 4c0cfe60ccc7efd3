"""Ranks of a distributed job writing one run: own parts, own seq range, one dataset."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from ndtracker import cli, reports, store
from ndtracker.reports.text import info_lines
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


def _two_rank_run(folder, info=None):
    """A run written by ranks 0 and 1 (``ranks="all"``): rank r logs ``10 * (r + 1)`` and its loss."""
    info = {"model": "Net", "options": {"every": 1}, "distributed": {"ranks": "all"}} if info is None else info
    first = store.RunWriter(folder, run_info=info, rank=0, flush_secs=60)
    second = store.RunWriter(folder, run_info={}, rank=1, run_id=first.run_id, flush_secs=60)
    for step in range(60):
        for rank, writer in enumerate((first, second)):
            writer.append([{"step": step, "layer": "fc", "space": space, "stable_rank": 10.0 * (rank + 1),
                            "loss": float(rank), "status": "ok"} for space in ("activation", "weight")])
    second.close()
    first.close()
    return first.run_id


def test_load_keeps_one_ranks_rows_and_names_the_ranks_present(tmp_path):
    _two_rank_run(tmp_path)
    frame = store.load(tmp_path, rank=1)
    assert len(frame) == 120 and set(frame["rank"]) == {1} and set(frame.stable_rank) == {20.0}
    assert len(store.load(tmp_path, rank=0, table="events")) == 0  # events filter too (none here)
    with pytest.raises(ValueError, match=r"rank=2: run .* has rows of rank\(s\) 0, 1 only"):
        store.load(tmp_path, rank=2)
    with pytest.raises(ValueError, match="similarity table has no rank column"):
        store.load(tmp_path, rank=0, table="similarity")
    with pytest.raises(ValueError, match=r"rank must be a process rank .* got rank=-1"):
        store.load(tmp_path, rank=-1)


def test_rows_of_one_process_count_as_rank_0(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=60)
    writer.append([{"step": s, "layer": "fc", "space": "weight", "stable_rank": 1.0} for s in range(3)])
    writer.close()
    assert len(store.load(tmp_path, rank=0)) == 3
    with pytest.raises(ValueError, match=r"has rows of rank\(s\) 0 only"):
        store.load(tmp_path, rank=1)


def test_a_report_of_a_run_written_by_every_rank_reads_one_rank(tmp_path):
    _two_rank_run(tmp_path)
    default = reports.report(tmp_path)
    assert len(default.series[0].steps) == 60  # not 120 steps alternating between the ranks
    assert {float(v) for s in default.series for v in s.values} == {10.0}
    other = reports.report(tmp_path, rank=1)
    assert {float(v) for s in other.series for v in s.values} == {20.0}
    assert set(other.phases["kind"]) == {"stabilization"}
    assert (default.rank, other.rank) == (0, 1)
    assert dict(info_lines(other))["rank"].startswith("1 (each rank wrote its own rows")


def test_the_header_names_a_rank_only_when_one_is_read(tmp_path):
    _two_rank_run(tmp_path, {"model": "Net", "options": {"every": 1},
                             "distributed": {"ranks": 0, "world_size": 2}})  # fmt: skip
    rep = reports.report(tmp_path, rank=1)
    assert rep.rank == 1 and dict(info_lines(rep))["rank"].startswith("1 of 2 (")
    single = tmp_path / "single"
    writer = store.RunWriter(single, run_info={"model": "Net", "options": {"every": 1}}, flush_secs=60)
    writer.append([{"step": s, "layer": "fc", "space": "weight", "stable_rank": 1.0, "status": "ok"} for s in range(30)])
    writer.close()
    assert reports.report(single).rank is None and "rank" not in dict(info_lines(reports.report(single)))


def test_cli_report_takes_a_rank(tmp_path, capsys):
    _two_rank_run(tmp_path)
    assert cli.main(["report", str(tmp_path), "--rank", "1", "--width", "120"]) == 0
    out = capsys.readouterr().out
    assert "20" in out and "rank" in out
    assert cli.main(["report", str(tmp_path), "--rank", "5"]) == 1
    assert "rank=5" in capsys.readouterr().err


def test_a_run_holding_two_ranks_rows_while_its_run_json_says_one_reports_with_a_note(tmp_path):
    """Rows of two ranks read together (a hand-edited or mixed run.json) give one row per step and
    a note, not the detector's traceback on repeated steps."""
    _two_rank_run(tmp_path, {"model": "Net", "options": {"every": 1}, "distributed": {"ranks": 0}})
    rep = reports.report(tmp_path)
    assert all(s.repeated == 60 and s.steps.tolist() == list(range(60)) for s in rep.series)
    assert any("60 rows at steps logged again later were left out" in note for note in rep.notes)
