"""Store runs on disk: one declared Parquet schema, a buffered crash-safe writer, and `load`.

A run directory holds any number of runs, each with its own run id::

    RUN_DIR/run.json                                   # {"schema_version": 1, "runs": [...]}
    RUN_DIR/metrics/part-<run_id>-<seq>.parquet        # one row per (step, layer, space)
    RUN_DIR/metrics/part-<run_id>-<first>-<last>.parquet   # a compacted part: seqs first..last
    RUN_DIR/events/part-<run_id>-<seq>.parquet         # jumps and phase changes

Every file is written under a hidden temporary name (``.<name>.<pid>-<thread>.tmp``), flushed to disk
and renamed into place, so a crash at any moment leaves only complete parts (plus temporary files,
which every reader ignores). A compacted part supersedes the parts whose seq falls in its range:
`load` skips those, so a crash between writing a compacted part and deleting its sources neither
loses nor duplicates a row. The parts are plain Parquet, readable by ``pandas.read_parquet``,
``pyarrow.dataset`` or DuckDB (``SELECT * FROM 'RUN_DIR/metrics/*.parquet'``), which skip the
temporary files; only those readers see duplicates, and only inside that crash window.
This module imports no torch.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import tempfile
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: run.json updates are not locked
    fcntl = None

__all__ = [
    "SCHEMA_VERSION", "METRIC_NAMES", "METRICS_SCHEMA", "EVENTS_SCHEMA",
    "RunWriter", "load", "read_run_info", "validate_log_dir",
]  # fmt: skip

SCHEMA_VERSION: int = 1
METRIC_NAMES = ("stable_rank", "participation_ratio", "effective_rank", "energy90")
_VERSION_KEY = "ndtracker_schema_version"


def _schema(table: str, fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    metadata = {_VERSION_KEY: str(SCHEMA_VERSION), "ndtracker_table": table}
    return pa.schema(fields, metadata=metadata)


METRICS_SCHEMA: pa.Schema = _schema("metrics", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("stable_rank", pa.float64()), ("participation_ratio", pa.float64()),
    ("effective_rank", pa.float64()), ("energy90", pa.int64()),
    ("rows", pa.int64()), ("cols", pa.int64()), ("estimator", pa.string()),
    ("loss", pa.float64()), ("wall_time", pa.float64()), ("status", pa.string()),
])  # fmt: skip
EVENTS_SCHEMA: pa.Schema = _schema("events", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("metric", pa.string()), ("kind", pa.string()), ("direction", pa.int8()),
    ("size", pa.float64()), ("z", pa.float64()), ("phase", pa.string()),
    ("wall_time", pa.float64()),
])  # fmt: skip

_SCHEMAS: dict[str, pa.Schema] = {"metrics": METRICS_SCHEMA, "events": EVENTS_SCHEMA}
_NULLABLE_INTS = {"energy90": "Int64", "direction": "Int8"}  # pandas dtypes that keep nulls
_SORT_KEYS = ("run_id", "step", "layer", "space")
_PART = re.compile(r"^part-(\d{8}-\d{6}-[0-9a-f]+)-(\d+)(?:-(\d+))?\.parquet$")
FANOUT = 16  # merge this many parts of one level into one part of the next level
_ROW_GROUP = 262_144  # rows per row group written by a merge


# ------------------------------------------------------------------------------ writing


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
        self.buffers = {name: _Buffer(limit) for name in _SCHEMAS}
        self.parts = {name: _Parts() for name in _SCHEMAS}
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
            for name in _SCHEMAS:
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
            return _rows_to_table(rows, _SCHEMAS[name], self.run_id)
        except Exception as error:  # unreadable rows would otherwise be retried forever
            self._warn(f"ndtracker dropped {len(rows)} {name} rows it could not convert: {error!r}")
            return None

    def _write_part(self, name: str, table: pa.Table) -> None:
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "run.json").exists():  # the directory was deleted under us
            _register(self.run_dir, self.entry, keep_id=True)
        with _atomic(folder / _part_name(self.run_id, (self.parts[name].next_seq,) * 2)) as tmp:
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
            span = _merge(self.run_dir / name, self.run_id, spans, _SCHEMAS[name])
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
        entry = _register(run_dir, dict(run_info))
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
    return table.sort_by([(key, "ascending") for key in _SORT_KEYS[1:]])


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
    number = isinstance(flush_secs, (int, float)) and not isinstance(flush_secs, bool)
    if not number or not 0 < flush_secs < float("inf"):
        raise ValueError(f"flush_secs must be a positive number of seconds, got {flush_secs!r}")
    if not isinstance(max_buffer_rows, int) or isinstance(max_buffer_rows, bool) or max_buffer_rows < 1:
        raise ValueError(f"max_buffer_rows must be a positive integer, got {max_buffer_rows!r}")


# ------------------------------------------------------------------------------ files


def validate_log_dir(log_dir: str | os.PathLike) -> Path:
    """Check that ``log_dir`` can hold runs, creating it (and its parents) when missing.

    Args:
        log_dir: The run directory a tracker will write to.

    Returns:
        The directory as a ``Path``.

    Raises:
        ValueError: ``log_dir`` is an existing file, or cannot be created or written; the message
            names the path and what to do.
    """
    path = Path(log_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"log_dir={str(log_dir)!r} is a file, not a directory; pass the path of a "
                         "directory (it is created if missing)")  # fmt: skip
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ValueError(f"log_dir={str(log_dir)!r} cannot be created or written ({error}); pass a "
                         "directory you can write to") from None  # fmt: skip
    return path


def _part_name(run_id: str, span: tuple[int, int]) -> str:
    first, last = span
    seqs = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
    return f"part-{run_id}-{seqs}.parquet"


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success fsync it and rename it to ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _merge(folder: Path, run_id: str, spans: list[tuple[int, int]], schema: pa.Schema) -> tuple[int, int]:
    """Merge the parts ``spans`` into one part covering them, then delete them; return its span."""
    span = (spans[0][0], spans[-1][1])
    sources = [folder / _part_name(run_id, each) for each in spans]
    with _atomic(folder / _part_name(run_id, span)) as tmp, pq.ParquetWriter(tmp, schema) as out:
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


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` across processes (where ``fcntl`` exists)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(run_dir / ".run.json.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _register(run_dir: Path, run_info: Mapping[str, Any], keep_id: bool = False) -> dict[str, Any]:
    """Add a run entry to ``run_dir/run.json`` (atomically, under a lock) and return it.

    Args:
        run_dir: The run directory (it exists).
        run_info: The facts to store; ``run_id`` and ``started`` are set here unless ``keep_id``.
        keep_id: Store ``run_info`` as it is (a writer restoring a deleted ``run.json``).
    """
    with _locked(run_dir):
        doc = _read_doc(run_dir, strict=True) or {"schema_version": SCHEMA_VERSION, "runs": []}
        taken = {run.get("run_id") for run in doc["runs"]} | _part_runs(run_dir)
        entry = dict(run_info) if keep_id else _new_entry(run_info, taken)
        doc["runs"].append(entry)
        with _atomic(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return entry


def _new_entry(run_info: Mapping[str, Any], taken: set[Any]) -> dict[str, Any]:
    from ndtracker import __version__

    entry = {"run_id": _new_run_id(taken), "started": _now(), "ndtracker_version": __version__}
    entry.update((key, value) for key, value in run_info.items() if key not in ("run_id", "started"))
    return entry


def _new_run_id(taken: set[Any]) -> str:
    while True:
        run_id = time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)
        if run_id not in taken:
            return run_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _read_doc(run_dir: Path, strict: bool = False) -> dict[str, Any] | None:
    """Read ``run.json``: None when absent; a damaged one raises when ``strict``, else warns.

    Raises:
        SchemaError: The file says a newer schema version.
        NdtrackerError: ``strict`` and the file is not a valid run file.
    """
    path = run_dir / "run.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        runs, version = doc["runs"], int(doc.get("schema_version", 1))
        if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
            raise TypeError("'runs' is not a list of objects")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        if strict:
            raise NdtrackerError(f"{path} is not a valid ndtracker run file ({error!r}); move it "
                                 "away or choose another log_dir") from None  # fmt: skip
        warnings.warn(f"ignoring {path}: not a valid ndtracker run file ({error!r})", RuntimeWarning,
                      stacklevel=4)
        return None
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema_version {version}, newer than {SCHEMA_VERSION}, the "
                          "newest this ndtracker reads; upgrade ndtracker")  # fmt: skip
    return doc


# ------------------------------------------------------------------------------ reading


def read_run_info(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Return the ``run.json`` entry of every run in ``run_dir``, oldest first.

    A run that has parts but no entry (``run.json`` lost) gets ``{"run_id", "started"}``, the start
    time read from its id.

    Raises:
        RunNotFoundError: ``run_dir`` does not exist or holds neither a ``run.json`` nor parts.
        SchemaError: ``run.json`` says a newer schema version.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunNotFoundError(f"{str(run_dir)!r} does not exist or is not a directory; pass the "
                               "log_dir a Tracker wrote to")  # fmt: skip
    doc = _read_doc(root)
    runs = [] if doc is None else list(doc["runs"])
    known = {run.get("run_id") for run in runs}
    runs += [_implied_run(run_id) for run_id in sorted(_part_runs(root) - known)]
    if doc is None and not runs:
        raise RunNotFoundError(f"{str(run_dir)!r} holds no ndtracker run (no run.json and no "
                               "parts); pass the log_dir a Tracker wrote to")  # fmt: skip
    return sorted(runs, key=lambda run: str(run.get("started", "")))


def _implied_run(run_id: str) -> dict[str, Any]:
    try:
        started = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return {"run_id": run_id, "started": ""}
    return {"run_id": run_id, "started": started.isoformat(timespec="microseconds")}


def _part_runs(root: Path) -> set[str]:
    return {match.group(1) for name in _SCHEMAS for _, match in _listing(root / name) if match}


def _listing(folder: Path) -> list[tuple[str, re.Match[str] | None]]:
    """Return the Parquet files in ``folder`` (temporary ones excluded), with their name's parse."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [name for name in names if name.endswith(".parquet") and not name.startswith((".", "_"))]
    return [(name, _PART.match(name)) for name in sorted(names)]


def load(
    run_dir: str | os.PathLike,
    *,
    run_id: str | None = None,
    events: bool = False,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Load the rows of a run directory as a DataFrame, sorted by (run start, step, layer, space).

    Args:
        run_dir: The directory a Tracker (or `RunWriter`) wrote to.
        run_id: Load only this run (default: every run; each row carries its ``run_id``).
        events: Load the events table (jumps and phases) instead of the metrics.
        columns: Load only these columns, in this order (default: all, in schema order).

    Returns:
        One row per (step, layer, space) for metrics; ``energy90`` (and ``direction`` of events) are
        pandas nullable integers. An empty frame with the same columns and dtypes when no part exists.

    Raises:
        RunNotFoundError: ``run_dir`` does not exist or holds no run.
        ValueError: ``run_id`` is not a run in ``run_dir``, or ``columns`` names an unknown column.
        SchemaError: ``run.json`` or a part was written with a newer schema version.

    Damaged parts (truncated, not Parquet, other columns) are skipped with a warning naming them.
    """
    schema = EVENTS_SCHEMA if events else METRICS_SCHEMA
    wanted = _check_columns(columns, schema)
    runs = [str(run.get("run_id")) for run in read_run_info(run_dir)]
    if run_id is not None and run_id not in runs:
        raise ValueError(f"run_id={run_id!r} is not a run in {str(run_dir)!r}; its runs are: "
                         f"{', '.join(runs)}")  # fmt: skip
    names = list(dict.fromkeys([*_SORT_KEYS, *wanted]))
    table = _read_parts(Path(run_dir) / ("events" if events else "metrics"), schema, runs, run_id, names)
    return _to_frame(_sorted(table, runs), wanted)


def _check_columns(columns: Sequence[str] | None, schema: pa.Schema) -> list[str]:
    if columns is None:
        return list(schema.names)
    unknown = [name for name in columns if name not in schema.names]
    if unknown or isinstance(columns, str):
        raise ValueError(f"columns={columns!r} is not a list of known columns; they are: "
                         f"{', '.join(schema.names)}")  # fmt: skip
    return list(columns)


def _read_parts(
    folder: Path, schema: pa.Schema, runs: list[str], run_id: str | None, names: list[str]
) -> pa.Table:
    """Read the live parts of ``folder`` as one table of the ``names`` columns (strings encoded)."""
    target = _encoded(pa.schema([schema.field(name) for name in names]))
    opened = _open_parts(folder, runs, run_id, target)
    try:
        tables = [_read_part(path, part, target, run_id) for path, part in opened]
    finally:
        for _, part in opened:
            if isinstance(part, pq.ParquetFile):
                part.close()
    kept = [table for table in tables if table is not None]
    return pa.concat_tables(kept).unify_dictionaries() if kept else target.empty_table()


def _open_parts(
    folder: Path, runs: list[str], run_id: str | None, target: pa.Schema
) -> list[tuple[Path, Any]]:
    """Open every live part, listing again whenever a concurrent compaction deleted one first.

    An open part stays readable after it is deleted, so once all are open the set is consistent.
    Returns (path, ``ParquetFile``) pairs, or (path, error) for a file Parquet cannot open.
    """
    strings = [field.name for field in target if pa.types.is_dictionary(field.type)]
    for _ in range(100):
        opened: list[tuple[Path, Any]] = []
        try:
            for name in _live_parts(folder, runs, run_id):
                opened.append((folder / name, _open(folder / name, strings)))
            return opened
        except FileNotFoundError:
            for _, part in opened:
                if isinstance(part, pq.ParquetFile):
                    part.close()
    raise NdtrackerError(f"the parts in {folder} kept changing while being read; try again")


def _open(path: Path, strings: list[str]) -> pq.ParquetFile | Exception:
    try:
        try:
            return pq.ParquetFile(path, read_dictionary=strings)
        except KeyError:  # a string column is missing: open it as is, `_read_part` says which
            return pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        return error


def _encoded(schema: pa.Schema) -> pa.Schema:
    """Return ``schema`` with its string columns dictionary-encoded: much faster to read and sort."""
    encoded = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([pa.field(f.name, encoded) if pa.types.is_string(f.type) else f for f in schema])


def _live_parts(folder: Path, runs: list[str], run_id: str | None) -> list[str]:
    """Return the part names to read, in (run, seq) order, without the parts a compaction covers."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    other = []
    for name, match in _listing(folder):
        if match is None:
            other.append(name)
        elif run_id in (None, match.group(1)):
            first = int(match.group(2))
            spans.setdefault(match.group(1), []).append((first, int(match.group(3) or first), name))
    order = {run: index for index, run in enumerate(runs)}
    ordered = sorted(spans, key=lambda run: (order.get(run, len(order)), run))
    return [name for run in ordered for name in _uncovered(spans[run])] + other


def _uncovered(spans: list[tuple[int, int, str]]) -> list[str]:
    """Drop every span that lies inside another (its rows live in the covering compacted part)."""
    live, reach = [], -1
    for first, last, name in sorted(spans, key=lambda span: (span[0], -span[1])):
        if last > reach:
            live.append(name)
            reach = last
    return live


def _read_part(
    path: Path, part: pq.ParquetFile | Exception, target: pa.Schema, run_id: str | None
) -> pa.Table | None:
    """Read one opened part as ``target``; None, with a warning naming the file, when it is damaged."""
    try:
        if isinstance(part, Exception):
            raise part
        _check_version(part.schema_arrow, path)
        missing = [name for name in target.names if name not in part.schema_arrow.names]
        if missing:
            _skip(path, f"it is not an ndtracker part (no column {missing[0]!r})")
            return None
        table = part.read(columns=target.names)
    except (pa.ArrowException, OSError) as error:
        _skip(path, f"it is not a readable Parquet file ({error})")
        return None
    return _conform(table, target, path, run_id)


def _conform(table: pa.Table, target: pa.Schema, path: Path, run_id: str | None) -> pa.Table | None:
    if not table.schema.equals(target, check_metadata=False):
        try:
            table = table.cast(target)
        except (pa.ArrowException, ValueError) as error:
            _skip(path, f"its columns do not have the ndtracker types ({error})")
            return None
    if run_id is not None and _PART.match(path.name) is None:
        table = table.filter(pc.equal(table["run_id"], run_id))
    return table.replace_schema_metadata(None)


def _check_version(schema: pa.Schema, path: Path) -> None:
    version = (schema.metadata or {}).get(_VERSION_KEY.encode())
    if version is not None and version.isdigit() and int(version) > SCHEMA_VERSION:
        raise SchemaError(f"{path} was written with schema version {int(version)}, newer than "
                          f"{SCHEMA_VERSION}, the newest this ndtracker reads; upgrade "
                          "ndtracker")  # fmt: skip


def _skip(path: Path, why: str) -> None:
    warnings.warn(f"skipping {path}: {why}", RuntimeWarning, stacklevel=5)


def _sorted(table: pa.Table, runs: list[str]) -> pa.Table:
    """Sort by (run start, step, layer, space), stably; most logs are in order already."""
    if table.num_rows < 2:
        return table
    codes = [
        _codes(table["run_id"], runs),
        pc.fill_null(table["step"], -1).to_numpy(),
        _codes(table["layer"]),
        _codes(table["space"]),
    ]
    key = _composite(codes)
    if key is None:
        order = np.lexsort(codes[::-1])
    elif bool(np.all(key[1:] >= key[:-1])):
        return table
    else:
        order = np.argsort(key, kind="stable")
    return table.take(order)


def _codes(column: pa.ChunkedArray, values: list[str] | None = None) -> np.ndarray:
    """Rank each row of a dictionary column among ``values`` (default: its values, sorted); nulls last.

    The chunks must share one dictionary (``Table.unify_dictionaries``).
    """
    dictionary = column.chunk(0).dictionary
    if values is None:
        rank = np.empty(len(dictionary), np.int64)
        rank[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary))
    else:
        found = pc.index_in(dictionary, value_set=pa.array(values, pa.string()))
        rank = pc.fill_null(found, len(values)).to_numpy().astype(np.int64)
    rank = np.append(rank, rank.max(initial=-1) + 1)  # the rank of null
    null = len(dictionary)
    return np.concatenate([rank[pc.fill_null(chunk.indices, null).to_numpy()] for chunk in column.chunks])


def _composite(codes: list[np.ndarray]) -> np.ndarray | None:
    """Fold integer sort keys into one int64 key, or None when it would overflow."""
    key, span = np.zeros(len(codes[0]), np.int64), 1
    for code in codes:
        low = int(code.min())
        width = int(code.max()) - low + 1
        span *= width
        if span >= 2**62:
            return None
        key = key * width + (code.astype(np.int64) - low)
    return key


def _to_frame(table: pa.Table, wanted: list[str]) -> pd.DataFrame:
    """Convert to pandas: strings as ``str``, nullable integer columns as pandas nullable integers."""
    table = table.select(wanted)
    plain = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema]
    frame = table.cast(pa.schema(plain)).to_pandas(split_blocks=True, self_destruct=True)
    for name, dtype in _NULLABLE_INTS.items():
        if name in frame:
            frame[name] = frame[name].astype(dtype)
    return frame
