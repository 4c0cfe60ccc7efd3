"""Write one run's rows to a run directory: buffered, flushed in the background, crash-safe.

The write side of :mod:`ndtracker.store` (which re-exports `RunWriter`): a bounded in-memory buffer
per table, a daemon thread that writes it as a new Parquet part every ``flush_secs``, and the
compaction that merges small parts as they accumulate (16 parts of one level make one part of the
next) and the whole run into one part per table at ``close()``. Every file goes through
`layout.atomic_write` (temporary name, fsync, rename), so a crash never leaves a part that breaks `load`.
This module imports no torch.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ndtracker.checks import positive_int, positive_seconds
from ndtracker.store.layout import atomic_write, part_name, register_run, validate_log_dir
from ndtracker.store.schema import SCHEMAS, SORT_KEYS

__all__ = ["RunWriter"]

FANOUT = 16  # merge this many parts of one level into one part of the next level
_ROW_GROUP = 262_144  # rows per row group written by a merge


class _Buffer:
    """Rows waiting for one table, bounded: beyond ``limit`` the oldest are dropped and counted."""

    def __init__(self, limit: int) -> None:
        self._rows: deque[Mapping[str, Any]] = deque(maxlen=limit)
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._extend(rows)

    def take(self) -> list[Mapping[str, Any]]:
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
            return rows

    def put_back(self, rows: list[Mapping[str, Any]]) -> None:
        """Return rows that could not be written to the front of the buffer."""
        with self._lock:
            newer = self._rows
            self._rows = deque(rows, maxlen=newer.maxlen)
            self._extend(newer)

    def _extend(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.dropped += max(0, len(self._rows) + len(rows) - self._rows.maxlen)
        self._rows.extend(rows)

    def take_dropped(self) -> int:
        with self._lock:
            dropped, self.dropped = self.dropped, 0
            return dropped


class _Parts:
    """Seq numbers and compaction levels of one table of one run (level 0: flushed parts)."""

    def __init__(self) -> None:
        self.next_seq = 0
        self.levels: list[list[tuple[int, int]]] = [[]]

    def added(self) -> None:
        """Record that the part ``next_seq`` was written."""
        self.levels[0].append((self.next_seq, self.next_seq))
        self.next_seq += 1

    def full_level(self) -> int | None:
        return next((k for k, level in enumerate(self.levels) if len(level) >= FANOUT), None)

    def merged(self, level: int | None, span: tuple[int, int]) -> None:
        """Record that ``level`` (every level when None) was merged into the part ``span``."""
        if level is None:
            self.levels = [[], [span]]
            return
        self.levels[level] = []
        if level + 1 == len(self.levels):
            self.levels.append([])
        self.levels[level + 1].append(span)

    def all(self) -> list[tuple[int, int]]:
        return sorted(span for level in self.levels for span in level)


class _Run:
    """The state behind a `RunWriter`; it never references the writer, so the writer can be collected.

    Its daemon thread flushes every ``flush_secs``; once stopped, the thread does the final flush and
    compaction. ``release`` only signals (the garbage collector may call it from any thread, holding
    any lock); ``close`` also waits for the final flush.
    """

    def __init__(self, run_dir: Path, entry: dict[str, Any], flush_secs: float, limit: int) -> None:
        self.run_dir, self.entry, self.run_id = run_dir, entry, entry["run_id"]
        self.flush_secs, self.limit, self.pid = flush_secs, limit, os.getpid()
        self.buffers = {name: _Buffer(limit) for name in SCHEMAS}
        self.parts = {name: _Parts() for name in SCHEMAS}
        self.io_lock, self.stop = threading.Lock(), threading.Event()
        self.closed = self.finished = self.failing = False
        self.merge_failed: set[str] = set()
        self.thread = threading.Thread(target=self._loop, name=f"ndtracker-{self.run_id}", daemon=True)
        _OPEN.add(self)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.flush_secs):
            self.flush()
        self.finish()

    def release(self) -> None:
        """Stop taking rows and let the thread write what is left; never blocks."""
        self.closed = True
        self.stop.set()

    def close(self) -> None:
        """Release and wait for the final flush (done here if the thread is gone, as after a fork)."""
        self.release()
        if self.thread is not threading.current_thread():
            self.thread.join()
            if not self.finished:
                self.finish()

    def finish(self) -> None:
        """Write what is left, merge the run's parts, and warn about rows that could not be written."""
        self.flush(final=True)
        lost = sum(len(buffer.take()) + buffer.take_dropped() for buffer in self.buffers.values())
        self.finished = True
        _OPEN.discard(self)
        if lost and os.getpid() == self.pid:
            self._warn(f"ndtracker lost {lost} rows of run {self.run_id}: {self.run_dir} could "
                       "not be written before the writer closed")  # fmt: skip

    def flush(self, final: bool = False) -> None:
        """Write every buffered row as new parts and compact; warn instead of raising."""
        if os.getpid() != self.pid:  # a forked child holds a copy of the parent's rows
            return
        with self.io_lock:
            for name in SCHEMAS:
                if self._flush_table(name):
                    self._compact(name, final)

    def _flush_table(self, name: str) -> bool:
        """Write one table's buffer as a part; on failure keep the rows. Return whether it worked."""
        rows = self.buffers[name].take()
        if not rows:
            return True
        table = self._to_arrow(name, rows)
        if table is None:
            return True
        try:
            self._write_part(name, table)
        except Exception as error:  # a full disk or a deleted directory must not stop training
            self.buffers[name].put_back(rows)
            self._fault(self.run_dir / name, error)
            return False
        self._recovered(name)
        return True

    def _to_arrow(self, name: str, rows: list[Mapping[str, Any]]) -> pa.Table | None:
        try:
            return _rows_to_table(rows, SCHEMAS[name], self.run_id)
        except Exception as error:  # unreadable rows would otherwise be retried forever
            self._warn(f"ndtracker dropped {len(rows)} {name} rows it could not convert: {error!r}")
            return None

    def _write_part(self, name: str, table: pa.Table) -> None:
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "run.json").exists():  # the directory was deleted under us
            register_run(self.run_dir, self.entry, keep_id=True)
        with atomic_write(folder / part_name(self.run_id, (self.parts[name].next_seq,) * 2)) as tmp:
            pq.write_table(table, tmp)
        self.parts[name].added()

    def _compact(self, name: str, final: bool) -> None:
        """Merge a full level of parts (every part when ``final``); after a failure, only at close."""
        parts = self.parts[name]
        level = None if final or name in self.merge_failed else parts.full_level()
        spans = parts.all() if final else [] if level is None else parts.levels[level]
        if len(spans) < 2:
            return
        try:
            span = _merge(self.run_dir / name, self.run_id, spans, SCHEMAS[name])
        except Exception as error:  # the sources are intact
            if name not in self.merge_failed:
                self.merge_failed.add(name)
                self._warn(f"ndtracker could not merge the parts in {self.run_dir / name}: {error!r}; "
                           "it tries again at close()")  # fmt: skip
            return
        parts.merged(level, span)

    def _fault(self, folder: Path, error: Exception) -> None:
        if not self.failing:
            self.failing = True
            self._warn(f"ndtracker could not write to {folder}: {error!r}; keeping up to "
                       f"{self.limit} rows per table in memory and retrying every "
                       f"{self.flush_secs:g} s; training continues")  # fmt: skip

    def _recovered(self, name: str) -> None:
        self.failing = False
        dropped = self.buffers[name].take_dropped()
        if dropped:
            self._warn(f"ndtracker dropped the oldest {dropped} {name} rows of run {self.run_id}: "
                       f"more than max_buffer_rows={self.limit} rows waited to be written to "
                       f"{self.run_dir}")  # fmt: skip

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


_OPEN: set[_Run] = set()  # runs whose final flush is still to come


@atexit.register
def _close_open_runs() -> None:
    """Finish every run at interpreter exit; a finished run leaves the set, so nothing stays alive."""
    for run in list(_OPEN):
        run.close()


class RunWriter:
    """Write one run's rows to a run directory: buffered, flushed in the background, crash-safe.

    ``append`` only extends an in-memory buffer; a daemon thread writes the buffer as a new Parquet
    part every ``flush_secs`` (when there is something to write), as do ``flush()``, ``close()`` and
    interpreter exit. Small parts are merged as they accumulate (16 parts of one size make one of the
    next), and ``close()`` merges the run into one part per table. A failed write (disk full, the
    directory deleted) warns once, keeps the rows and retries at the next flush; the buffer keeps
    at most ``max_buffer_rows`` rows per table, dropping the oldest (counted, and reported by a
    warning once writing works again).

    Args:
        log_dir: The run directory; created if missing. Other runs in it are left untouched.
        run_info: JSON-serialisable facts about the run (options, layers, model...) stored in its
            ``run.json`` entry next to ``run_id``, ``started`` (ISO 8601, UTC) and
            ``ndtracker_version``. Values JSON cannot hold are stored as strings.
        flush_secs: Seconds between background flushes (default 5.0); must be positive.
        max_buffer_rows: Rows kept per table while writing fails (default 200 000).

    Raises:
        ValueError: ``log_dir`` is a file or cannot be created or written, or an option is invalid.
        SchemaError: ``log_dir`` holds runs written with a newer schema.
        NdtrackerError: ``log_dir/run.json`` exists but is not a valid run file.

    Example:
        >>> import tempfile
        >>> from ndtracker.store import load
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     writer = RunWriter(folder, run_info={"model": "MLP"})
        ...     writer.append([{"step": 0, "layer": "fc", "space": "weight", "stable_rank": 2.5}])
        ...     writer.close()
        ...     frame = load(folder)
        >>> frame[["step", "layer", "stable_rank"]].to_dict("records"), str(frame["energy90"].dtype)
        ([{'step': 0, 'layer': 'fc', 'stable_rank': 2.5}], 'Int64')
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        run_info: Mapping[str, Any],
        flush_secs: float = 5.0,
        max_buffer_rows: int = 200_000,
    ) -> None:
        _check_options(run_info, flush_secs, max_buffer_rows)
        run_dir = validate_log_dir(log_dir)
        entry = register_run(run_dir, dict(run_info))
        self._run = _Run(run_dir, entry, float(flush_secs), max_buffer_rows)
        self._metrics, self._events = self._run.buffers["metrics"], self._run.buffers["events"]
        self._finalizer = weakref.finalize(self, self._run.release)  # a dropped writer still flushes
        self._finalizer.atexit = False  # `_close_open_runs` waits for the final flush instead

    @property
    def run_id(self) -> str:
        """The id of this run, unique in its directory and sortable by start time."""
        return self._run.run_id

    @property
    def run_dir(self) -> Path:
        """The run directory the parts are written to."""
        return self._run.run_dir

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer metrics rows (dicts keyed by column; missing columns are stored as null).

        Args:
            rows: One mapping per (step, layer, space); ``run_id`` is filled in by the writer. The
                mappings are read at the next flush, so do not modify them after appending.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._metrics.push(rows)

    def append_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer event rows (jumps and phase changes), like `append`.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._events.push(rows)

    def flush(self) -> None:
        """Write the buffered rows now as new parts (a no-op once closed); never raises on I/O."""
        if not self._run.closed:
            self._run.flush()

    def close(self) -> None:
        """Flush, stop the background thread and compact the run's parts; idempotent."""
        self._finalizer.detach()
        self._run.close()

    def _check_open(self) -> None:
        if self._run.closed:
            raise ValueError(f"RunWriter of run {self.run_id} in {str(self.run_dir)!r} is closed")


def _rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, run_id: str) -> pa.Table:
    """Convert row mappings to a table of ``schema``, sorted by (step, layer, space).

    Args:
        rows: Mappings keyed by column name; missing keys are null, unknown keys are ignored.
        schema: `METRICS_SCHEMA` or `EVENTS_SCHEMA`.
        run_id: The value of the ``run_id`` column.

    Returns:
        The table; a value its column's type cannot hold (a NaN in an integer column, text in a
        float column) is stored as null.
    """
    columns = [pa.repeat(pa.scalar(run_id, pa.string()), len(rows))]
    for field in list(schema)[1:]:
        columns.append(_column([row.get(field.name) for row in rows], field.type))
    table = pa.Table.from_arrays(columns, schema=schema)
    return table.sort_by([(key, "ascending") for key in SORT_KEYS[1:]])


_BAD_VALUE = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _column(values: list[Any], kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=kind)
    except _BAD_VALUE:  # rare: convert value by value, nulls for what does not fit
        return pa.array([_fit(value, kind) for value in values], type=kind)


def _fit(value: Any, kind: pa.DataType) -> Any:
    """Return ``value``, or its conversion to the Python type of ``kind``, or None if neither fits."""
    for candidate in (value, _coerce(value, kind)):
        try:
            pa.scalar(candidate, type=kind)
            return candidate
        except _BAD_VALUE:
            pass
    return None


def _coerce(value: Any, kind: pa.DataType) -> Any:
    try:
        if pa.types.is_string(kind):
            return str(value)
        if pa.types.is_integer(kind):
            number = float(value)
            return int(number) if number.is_integer() else None
        return float(value)
    except _BAD_VALUE:
        return None


def _check_options(run_info: Any, flush_secs: Any, max_buffer_rows: Any) -> None:
    if not isinstance(run_info, Mapping):
        raise TypeError(f"run_info must be a mapping, got {type(run_info).__name__}")
    positive_seconds("flush_secs", flush_secs)
    positive_int("max_buffer_rows", max_buffer_rows)


def _merge(folder: Path, run_id: str, spans: list[tuple[int, int]], schema: pa.Schema) -> tuple[int, int]:
    """Merge the parts ``spans`` into one part covering them, then delete them; return its span."""
    span = (spans[0][0], spans[-1][1])
    sources = [folder / part_name(run_id, each) for each in spans]
    with atomic_write(folder / part_name(run_id, span)) as tmp, pq.ParquetWriter(tmp, schema) as out:
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
        if path.exists():  # a part deleted by hand has nothing left to merge
            with pq.ParquetFile(path) as part:
                yield from part.iter_batches(batch_size=65_536)
