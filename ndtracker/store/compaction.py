"""Merge one run's small parts as they accumulate, on a thread of its own, retrying after a failure.

Each table of a run has levels of parts (level 0: the flushed parts). When a level holds `FANOUT`
parts, the `Compactor`'s thread merges them into one part of the next level, so a long run keeps
few files. Merging never holds up a flush (the flush thread only records that a part was added), and
a merge that fails (a full disk) leaves its sources intact and is tried again after a delay that
doubles from `RETRY_SECS` up to `MAX_RETRY_SECS`. At ``close()`` the writer stops the thread and
merges the whole run into one part per table (`merge_all`). This module imports no torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ndtracker.store.files import atomic_write, open_regular
from ndtracker.store.layout import part_name
from ndtracker.store.schema import SCHEMAS

__all__ = ["FANOUT", "RETRY_SECS", "MAX_RETRY_SECS", "Compactor", "merge"]

FANOUT = 16  # merge this many parts of one level into one part of the next level
RETRY_SECS = 1.0  # first delay before a failed merge is tried again; it doubles after each failure
MAX_RETRY_SECS = 300.0
_ROW_GROUP = 262_144  # rows per row group written by a merge

Span = tuple[int, int]


class Parts:
    """Seq numbers and compaction levels of one table of one run (level 0: flushed parts)."""

    def __init__(self, first_seq: int = 0) -> None:
        self.first_seq = self.next_seq = first_seq
        self.levels: list[list[Span]] = [[]]

    def added(self) -> None:
        """Record that the part ``next_seq`` was written."""
        self.levels[0].append((self.next_seq, self.next_seq))
        self.next_seq += 1

    def full_level(self) -> int | None:
        return next((k for k, level in enumerate(self.levels) if len(level) >= FANOUT), None)

    def merged(self, level: int, sources: list[Span], span: Span) -> None:
        """Record that ``sources`` of ``level`` became the part ``span`` of the next level."""
        self.levels[level] = [each for each in self.levels[level] if each not in sources]
        if level + 1 == len(self.levels):
            self.levels.append([])
        self.levels[level + 1].append(span)

    def merged_all(self, span: Span) -> None:
        self.levels = [[], [span]]

    def all(self) -> list[Span]:
        return sorted(span for level in self.levels for span in level)


class Compactor:
    """The parts of one run's tables, and the thread that merges their full levels.

    Args:
        run_dir: The run directory.
        run_id: The run whose parts are merged.
        warn: Called with a message when a merge fails (once per run of failures).
        first_seq: The seq of the first part (rank ``r`` of a distributed job: ``r * 10**8``).
    """

    def __init__(self, run_dir: Path, run_id: str, warn, first_seq: int = 0) -> None:
        self.run_dir, self.run_id, self.warn = run_dir, run_id, warn
        self.parts = {name: Parts(first_seq) for name in SCHEMAS}
        self.lock = threading.Lock()
        self.wake, self.stop = threading.Event(), threading.Event()
        self.busy = False
        self.failures = 0
        self.retry_at = 0.0
        self.thread = threading.Thread(target=self._loop, name=f"ndtracker-merge-{run_id}", daemon=True)
        self.thread.start()

    def next_name(self, name: str) -> str:
        """The file name the next flushed part of table ``name`` gets."""
        with self.lock:
            return part_name(self.run_id, (self.parts[name].next_seq,) * 2)

    def added(self, name: str) -> None:
        """Record a flushed part of table ``name``; wake the thread if a level is full."""
        with self.lock:
            self.parts[name].added()
            full = self.parts[name].full_level() is not None
        if full:
            self.wake.set()

    def close(self) -> None:
        """Stop the thread, letting a merge in progress finish."""
        self.stop.set()
        self.wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join()

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no merge is due or running (a failed one waits for its retry); for tests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                idle = not self.busy and (self._job() is None or time.monotonic() < self.retry_at)
            if idle and not self.wake.is_set():
                return True
            time.sleep(0.005)
        return False

    def merge_all(self) -> None:
        """Merge every part of each table into one (the thread must be stopped); warn on failure."""
        for name, parts in self.parts.items():
            spans = parts.all()
            if len(spans) < 2:
                continue
            try:
                parts.merged_all(merge(self.run_dir / name, self.run_id, spans, SCHEMAS[name]))
            except Exception as error:  # the sources are intact
                self.warn(f"ndtracker could not merge the parts in {self.run_dir / name}: {error!r}; "
                          "they stay as they are (every row is kept)")  # fmt: skip

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(self._delay())
            self.wake.clear()
            while not self.stop.is_set() and time.monotonic() >= self.retry_at:
                with self.lock:
                    job = self._job()
                    self.busy = job is not None
                if job is None:
                    break
                self._run(*job)

    def _delay(self) -> float | None:
        if self.failures == 0:
            return None
        return max(0.01, self.retry_at - time.monotonic())

    def _job(self) -> tuple[str, int, list[Span]] | None:
        """The next full level to merge (under the lock): (table, level, its spans)."""
        for name, parts in self.parts.items():
            level = parts.full_level()
            if level is not None:
                return name, level, list(parts.levels[level])
        return None

    def _run(self, name: str, level: int, spans: list[Span]) -> None:
        try:
            span = merge(self.run_dir / name, self.run_id, spans, SCHEMAS[name])
        except Exception as error:  # the sources are intact: try again later
            self._failed(name, error)
            return
        finally:
            with self.lock:
                self.busy = False
        with self.lock:
            self.parts[name].merged(level, spans, span)
        self.failures, self.retry_at = 0, 0.0

    def _failed(self, name: str, error: Exception) -> None:
        delay = min(RETRY_SECS * 2**self.failures, MAX_RETRY_SECS)
        if self.failures == 0:
            self.warn(f"ndtracker could not merge the parts in {self.run_dir / name}: {error!r}; "
                      f"it tries again in {delay:g} s (then less often) and at close()")  # fmt: skip
        self.failures += 1
        self.retry_at = time.monotonic() + delay


def merge(folder: Path, run_id: str, spans: list[Span], schema: pa.Schema) -> Span:
    """Merge the parts ``spans`` into one part covering them, then delete them; return its span."""
    span = (spans[0][0], spans[-1][1])
    sources = [folder / part_name(run_id, each) for each in spans]
    with atomic_write(folder / part_name(run_id, span)) as handle, pq.ParquetWriter(handle, schema) as out:
        pending: list[pa.RecordBatch] = []
        for batch in _batches(sources):
            pending.append(batch)
            if sum(len(each) for each in pending) >= _ROW_GROUP:
                out.write_table(pa.Table.from_batches(pending, schema))
                pending = []
        if pending:
            out.write_table(pa.Table.from_batches(pending, schema))
    for source in sources:  # the merged part now covers them: a failure here loses nothing
        try:
            source.unlink(missing_ok=True)
        except OSError:
            pass
    return span


def _batches(paths: list[Path]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        try:
            handle = open_regular(path)
        except FileNotFoundError:  # a part deleted by hand has nothing left to merge
            continue
        with handle, pq.ParquetFile(handle) as part:
            yield from part.iter_batches(batch_size=65_536)
