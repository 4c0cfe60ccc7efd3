"""Nothing lost on a healthy disk: back-pressure, merges off the flush path, retried merges, signals.

Each test reproduces a defect of issue 18 (rows dropped while the disk works, merges holding up
flushes, compaction off for good after one failure, a run.json entry lost, repeated warnings,
stale temporary files, SIGTERM behaving like SIGKILL) and checks the fixed behaviour.
"""

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

import pytest
from store_rows import grid, parts

from ndtracker import store
from ndtracker.store import compaction, files


# ------------------------------------------------------------------------------ back-pressure


def test_rows_arriving_faster_than_flushes_are_never_dropped(tmp_path):
    """200 layers x 2 spaces per step, a 100-row bound and no flush: every row is kept, no warning."""
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600, max_buffer_rows=100)
    layers = tuple(f"layer{i:03d}" for i in range(200))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(30):
            writer.append(grid([step], layers=layers))
        writer.close()
    frame = store.load(tmp_path)
    assert len(frame) == 30 * 200 * 2 and frame.step.unique().tolist() == list(range(30))


def test_a_tracker_with_many_layers_keeps_every_row(tmp_path):
    torch = pytest.importorskip("torch")
    import ndtracker

    model = torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(40)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ndtracker.Tracker(model, every=1, log_dir=str(tmp_path), flush_secs=3600,
                               max_buffer_rows=50, detect=False) as tracker:  # fmt: skip
            for _ in range(12):
                model(torch.randn(8, 6)).sum().backward()
                tracker.step()
    frame = ndtracker.load(tmp_path)
    assert len(frame) == 12 * 40 * 2 and not frame.duplicated(["step", "layer", "space"]).any()


# ------------------------------------------------------------------------------ compaction


def test_a_merge_in_progress_never_holds_up_a_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "FANOUT", 2)
    merging, release = threading.Event(), threading.Event()
    real = compaction.merge

    def slow_merge(*args):
        merging.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(compaction, "merge", slow_merge)
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    for step in range(2):
        writer.append(grid([step]))
        writer.flush()
    assert merging.wait(30)  # the merge of the first two parts is running, and blocked
    flushes = threading.Thread(target=_flush_more, args=(writer,))
    flushes.start()
    flushes.join(30)
    blocked = flushes.is_alive()
    release.set()
    flushes.join()
    assert not blocked  # before: the flush waited for the merge (2.78 s gaps at flush_secs=0.2)
    writer.close()
    assert len(store.load(tmp_path)) == 5 * 4 and len(parts(tmp_path)) == 1


def _flush_more(writer):
    for step in range(2, 5):
        writer.append(grid([step]))
        writer.flush()


def test_a_failed_merge_is_retried_before_close_with_backoff(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "FANOUT", 4)
    monkeypatch.setattr(compaction, "RETRY_SECS", 0.01)
    real, calls = compaction.merge, []

    def flaky_merge(*args):
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(compaction, "merge", flaky_merge)
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    with pytest.warns(RuntimeWarning, match="could not merge") as caught:
        for step in range(400):
            writer.append(grid([step], layers=("a",)))
            writer.flush()
        assert writer._run.compactor.settle()
    assert len(caught) == 1  # one warning for the run of failures
    assert len(parts(tmp_path)) <= 3 * 4  # before: one file per flush after the failure (400)
    assert len(calls) > 4  # retried until it worked, then merging went on
    writer.close()
    assert len(store.load(tmp_path)) == 800 and len(parts(tmp_path)) == 1


def test_the_retry_delay_doubles_up_to_its_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "MAX_RETRY_SECS", 8.0)
    warned = []
    compactor = compaction.Compactor(tmp_path, "20260101-000000-beef", warned.append)
    delays = []
    for _ in range(5):
        compactor._failed("metrics", OSError(28, "No space left on device"))
        delays.append(round(compactor.retry_at - time.monotonic()))
    compactor.close()
    assert delays == [1, 2, 4, 8, 8] and len(warned) == 1


SLOW_MERGE_CHILD = textwrap.dedent("""
    import sys, time
    from ndtracker.store import RunWriter, compaction

    compaction.FANOUT = 4
    real = compaction.merge
    def slow(*args):
        time.sleep(3.0)
        return real(*args)
    compaction.merge = slow
    writer = RunWriter(sys.argv[1], run_info={}, flush_secs=0.2)
    with open(sys.argv[2], "w") as progress:
        for step in range(10**9):
            writer.append([{"step": step, "layer": "fc", "space": "weight", "stable_rank": 1.0}])
            progress.write(f"{step} {time.time()}\\n")
            progress.flush()
            time.sleep(0.002)
""")


def test_sigkill_during_a_slow_merge_loses_at_most_the_last_flush_interval(tmp_path):
    progress = tmp_path / "progress.txt"
    child = subprocess.Popen([sys.executable, "-c", SLOW_MERGE_CHILD, str(tmp_path / "run"), str(progress)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (progress.exists() and progress.read_text()):
            time.sleep(0.05)
        time.sleep(4.0)  # merges start after 4 flushes and each takes 3 s
    finally:
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
        child.wait()
    lines = progress.read_text().split("\n")[:-1]
    marks = [(int(step), float(at)) for step, at in (line.split() for line in lines)]
    old = [step for step, at in marks if at < killed_at - 0.2 - 0.8]  # one interval plus slack
    steps = store.load(tmp_path / "run")["step"].tolist()
    assert steps == list(range(len(steps)))
    assert old and len(steps) > max(old)


# ------------------------------------------------------------------------------ run.json and faults


def test_deleting_the_directory_under_two_writers_keeps_both_entries(tmp_path):
    run_dir = tmp_path / "run"
    first = store.RunWriter(run_dir, run_info={}, flush_secs=3600)
    second = store.RunWriter(run_dir, run_info={}, flush_secs=3600)
    shutil.rmtree(run_dir)
    with pytest.warns(RuntimeWarning, match="restored the entry of run"):
        for step, writer in enumerate((first, second, first, second)):
            writer.append(grid([step]))
            writer.flush()
    first.close()
    second.close()
    ids = {run["run_id"] for run in store.read_run_info(run_dir)}
    assert ids == {first.run_id, second.run_id}
    assert len(store.load(run_dir, run_id="all")) == 2 * 2 * 4


def test_a_failing_table_warns_once_while_the_other_table_writes(tmp_path):
    writer = store.RunWriter(tmp_path, run_info={}, flush_secs=3600)
    shutil.rmtree(tmp_path / "events")
    (tmp_path / "events").write_text("a file where the folder was")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(5):
            writer.append(grid([step]))
            writer.append_events([{"step": step, "layer": "a", "space": "activation", "kind": "jump"}])
            writer.flush()
    failures = [w for w in caught if "could not write to" in str(w.message)]
    assert len(failures) == 1 and "events" in str(failures[0].message)  # before: 5, one per flush
    (tmp_path / "events").unlink()
    writer.close()
    assert len(store.load(tmp_path, events=True)) == 5


def test_stale_temporary_files_are_removed_at_the_next_open_and_live_ones_kept(tmp_path):
    store.RunWriter(tmp_path, run_info={}).close()
    folder = tmp_path / "metrics"
    dead_old = folder / ".part-x-000001.parquet.99999999-abcdef.tmp"
    dead_new = folder / ".part-x-000002.parquet.99999999-abcdef.tmp"
    live = folder / f".part-x-000003.parquet.{os.getppid()}-abcdef.tmp"
    for path in (dead_old, dead_new, live):
        path.write_bytes(b"PAR1 half written")
    hour_ago = time.time() - 3600
    os.utime(dead_old, (hour_ago, hour_ago))
    os.utime(live, (hour_ago, hour_ago))
    store.RunWriter(tmp_path, run_info={}).close()
    assert not dead_old.exists()  # before: left for ever; it broke polars.scan_parquet(dir)
    assert dead_new.exists() and live.exists()  # maybe a writer on another host; a live writer


def test_both_folders_exist_and_globs_work_once_a_run_is_opened(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    writer = store.RunWriter(tmp_path, run_info={})
    assert (tmp_path / "metrics").is_dir() and (tmp_path / "events").is_dir()
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/events/*.parquet'").fetchall() == [(0,)]
    writer.close()
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/metrics/*.parquet'").fetchall() == [(0,)]
    assert store.load(tmp_path).empty and store.load(tmp_path, events=True).empty


def test_a_full_disk_at_construction_is_one_clear_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(ValueError, match=r"log_dir=.* cannot be written .*No space left on device"):
        store.RunWriter(tmp_path / "run", run_info={})


# ------------------------------------------------------------------------------ signals


SIGNAL_CHILD = textwrap.dedent("""
    import signal, sys, time
    from ndtracker.store import RunWriter

    if sys.argv[3] == "python-handler":
        signal.signal(signal.SIGTERM, lambda *args: sys.exit(7))
    writer = RunWriter(sys.argv[1], run_info={}, flush_secs=3600)
    for step in range(10**9):
        writer.append([{"step": step, "layer": "fc", "space": "weight", "stable_rank": 1.0}])
        if step == 100:
            open(sys.argv[2], "w").close()
        time.sleep(0.001)
""")


@pytest.mark.parametrize("signum, before", [
    (signal.SIGTERM, "default"), (signal.SIGHUP, "default"), (signal.SIGTERM, "python-handler"),
])  # fmt: skip
def test_sigterm_and_sighup_flush_then_do_what_they_did_before(tmp_path, signum, before):
    ready = tmp_path / "ready"
    args = [sys.executable, "-c", SIGNAL_CHILD, str(tmp_path / "run"), str(ready), before]
    child = subprocess.Popen(args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ready.exists():
        time.sleep(0.02)
    child.send_signal(signum)
    code = child.wait(60)
    assert code == (7 if before == "python-handler" else -signum)  # the same end as without us
    steps = store.load(tmp_path / "run")["step"].tolist()
    assert len(steps) > 100 and steps == list(range(len(steps)))  # before: no row (flush_secs=3600)


def test_handlers_are_installed_from_the_main_thread_only(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        thread = threading.Thread(target=lambda: store.RunWriter(tmp_path, run_info={}).close())
        thread.start()
        thread.join()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        store.RunWriter(tmp_path, run_info={}).close()
        assert getattr(signal.getsignal(signal.SIGTERM), "ndtracker_flush", False)
    finally:
        signal.signal(signal.SIGTERM, before)
