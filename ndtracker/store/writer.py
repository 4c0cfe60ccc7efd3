"""Write one run's rows to a run directory: buffered, flushed in the background, crash-safe.

The write side of :mod:`ndtracker.store` (which re-exports `RunWriter`): an in-memory buffer per
table, a daemon thread that writes it as a new Parquet part every ``flush_secs``, and a
`compaction.Compactor` whose own thread merges small parts as they accumulate (so a merge never
holds up a flush), and that merges the whole run into one part per table at ``close()``. Every file
goes through `files.atomic_write` (exclusive hidden temporary name, fsync, rename), so a crash never
leaves a part that breaks `load`. No row is dropped while the disk works: when more than
``max_buffer_rows`` rows wait, ``append`` writes them itself (back-pressure); only while writing
fails does the buffer keep the newest ``max_buffer_rows`` rows and drop (and count) the oldest.
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
from dataclasses import dataclass
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ndtracker.checks import positive_int, positive_seconds
from ndtracker.errors import NdtrackerError
from ndtracker.store import signals
from ndtracker.store.compaction import Compactor
from ndtracker.store.files import atomic_write, make_dir
from ndtracker.store.layout import ensure_registered, open_run_dir, register_run, validate_log_dir
from ndtracker.store.rows import rows_to_table
from ndtracker.store.schema import SCHEMAS

__all__ = ["RunWriter"]

SIGNAL_LOCK_SECS = 10.0  # how long a signal handler waits for a flush in progress
RANK_SEQ_SPAN = 10**8  # rank r of a distributed job numbers its parts from r * RANK_SEQ_SPAN


@dataclass(frozen=True)
class _Identity:
    """Which run a writer adds to, and as which rank of a distributed job (None: not distributed)."""

    run_id: str
    rank: int | None


class _Buffer:
    """Rows waiting for one table; `trim` drops the oldest beyond a bound and counts them."""

    def __init__(self) -> None:
        self._rows: deque[Mapping[str, Any]] = deque()
        self._lock = threading.RLock()  # a signal handler may take rows while push holds it
        self.dropped = 0

    def push(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append rows; return how many wait now."""
        with self._lock:
            self._rows.extend(rows)
            return len(self._rows)

    def take(self) -> list[Mapping[str, Any]]:
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
            return rows

    def put_back(self, rows: list[Mapping[str, Any]]) -> None:
        """Return rows that could not be written to the front of the buffer."""
        with self._lock:
            self._rows.extendleft(reversed(rows))

    def trim(self, limit: int) -> None:
        """Drop the oldest rows beyond ``limit`` (counted in ``dropped``)."""
        with self._lock:
            while len(self._rows) > limit:
                self._rows.popleft()
                self.dropped += 1

    def take_dropped(self) -> int:
        with self._lock:
            dropped, self.dropped = self.dropped, 0
            return dropped


class _Run:
    """The state behind a `RunWriter`; it never references the writer, so the writer can be collected.

    Its daemon thread flushes every ``flush_secs``; once stopped, the thread does the final flush and
    compaction. ``release`` only signals (the garbage collector may call it from any thread, holding
    any lock); ``close`` also waits for the final flush.
    """

    def __init__(
        self, run_dir: Path, entry: dict[str, Any] | None, flush_secs: float, limit: int, rank: _Identity
    ) -> None:
        self.run_dir, self.entry, self.run_id = run_dir, entry, rank.run_id
        self.flush_secs, self.limit, self.pid, self.rank = flush_secs, limit, os.getpid(), rank.rank
        self.buffers = {name: _Buffer() for name in SCHEMAS}
        self.io_lock, self.stop = threading.Lock(), threading.Event()
        self.io_owner: int | None = None  # the thread holding io_lock
        self.closed = self.finished = False
        self.failing: set[str] = set()  # tables whose last write failed
        self.warned: set[str] = set()  # one-off warnings already given
        self.run_file = _stamp(run_dir / "run.json")  # run.json as last seen holding our entry
        self.compactor = Compactor(run_dir, self.run_id, self._warn, (rank.rank or 0) * RANK_SEQ_SPAN)
        self._ensure_part("events")  # DuckDB and Polars globs need a file, events may never come
        self.thread = threading.Thread(target=self._loop, name=f"ndtracker-{self.run_id}", daemon=True)
        _OPEN.add(self)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.flush_secs):
            self.flush()
        self.finish()

    def add(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer rows; beyond ``limit`` write them now (disk working) or drop the oldest (failing)."""
        if self.buffers[name].push(rows) <= self.limit:
            return
        if name not in self.failing:
            self.flush(only=name)  # back-pressure: the caller waits for the write
        if name in self.failing or os.getpid() != self.pid:  # a forked child never writes
            self.buffers[name].trim(self.limit)

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
        self.compactor.close()
        self.flush()
        if os.getpid() == self.pid:
            with self._io():
                self.compactor.merge_all()
                self._ensure_part("metrics")
        lost = sum(len(buffer.take()) + buffer.take_dropped() for buffer in self.buffers.values())
        self.finished = True
        _OPEN.discard(self)
        if lost and os.getpid() == self.pid:
            self._warn(f"ndtracker lost {lost} rows of run {self.run_id}: {self.run_dir} could "
                       "not be written before the writer closed")  # fmt: skip

    def flush(self, only: str | None = None) -> None:
        """Write every buffered row (of table ``only``, or all) as new parts; warn, never raise."""
        if os.getpid() != self.pid:  # a forked child holds a copy of the parent's rows
            return
        with self._io():
            for name in SCHEMAS if only is None else (only,):
                self._flush_table(name)

    @contextmanager
    def _io(self, timeout: float = -1) -> Iterator[bool]:
        """Hold ``io_lock`` (yield whether it was acquired within ``timeout``), noting the owner."""
        acquired = self.io_lock.acquire(timeout=timeout)
        if not acquired:
            yield False
            return
        self.io_owner = threading.get_ident()
        try:
            yield True
        finally:
            self.io_owner = None
            self.io_lock.release()

    def flush_from_signal(self) -> None:
        """Flush from a signal handler: skipped if this thread is mid-write (it cannot re-enter)."""
        if os.getpid() != self.pid or self.io_owner == threading.get_ident():
            return
        with self._io(SIGNAL_LOCK_SECS) as acquired:
            for name in SCHEMAS if acquired else ():
                self._flush_table(name)

    def _flush_table(self, name: str) -> None:
        """Write one table's buffer as a part; on failure keep the newest ``limit`` rows."""
        rows = self.buffers[name].take()
        if not rows:
            return
        table = self._to_arrow(name, rows)
        if table is None:
            return
        try:
            self._write_part(name, table)
        except Exception as error:  # a full disk or a deleted directory must not stop training
            self.buffers[name].put_back(rows)
            self._fault(name, error)
            self.buffers[name].trim(self.limit)
            return
        self._recovered(name)

    def _to_arrow(self, name: str, rows: list[Mapping[str, Any]]) -> pa.Table | None:
        try:
            return rows_to_table(rows, SCHEMAS[name], self.run_id, self.rank)
        except Exception as error:  # unreadable rows would otherwise be retried forever
            self._warn(f"ndtracker dropped {len(rows)} {name} rows it could not convert: {error!r}")
            return None

    def _write_part(self, name: str, table: pa.Table) -> None:
        folder = self.run_dir / name
        make_dir(folder)
        self._check_registered()
        with atomic_write(folder / self.compactor.next_name(name)) as handle:
            pq.write_table(table, handle)
        self.compactor.added(name)

    def _ensure_part(self, name: str) -> None:
        """Write an empty part of table ``name`` if it has none, so that globs over it work."""
        parts = self.compactor.parts[name]
        if parts.next_seq == parts.first_seq:
            try:
                self._write_part(name, SCHEMAS[name].empty_table())
            except Exception as error:
                self._fault(name, error)

    def _check_registered(self) -> None:
        """Restore this run's ``run.json`` entry if the file changed and lost it (warned once)."""
        stamp = _stamp(self.run_dir / "run.json")
        if self.entry is None or stamp is not None and stamp == self.run_file:
            return  # (a rank joining another rank's run leaves run.json to that rank)
        try:
            restored = ensure_registered(self.run_dir, self.entry)
        except NdtrackerError as error:  # a damaged run.json: the parts still load without it
            self._warn_once("run.json", f"ndtracker cannot record run {self.run_id}: {error}")
            return
        if restored:
            self._warn_once("restored", f"ndtracker restored the entry of run {self.run_id} in "
                            f"{self.run_dir / 'run.json'}: the directory or the file was deleted or "
                            "replaced while the run wrote to it (parts deleted with it are "
                            "gone)")  # fmt: skip
        self.run_file = _stamp(self.run_dir / "run.json")

    def _fault(self, name: str, error: Exception) -> None:
        if name not in self.failing:
            self.failing.add(name)
            self._warn(f"ndtracker could not write to {self.run_dir / name}: {error!r}; keeping up "
                       f"to {self.limit} rows per table in memory and retrying every "
                       f"{self.flush_secs:g} s; training continues")  # fmt: skip

    def _recovered(self, name: str) -> None:
        self.failing.discard(name)
        dropped = self.buffers[name].take_dropped()
        if dropped:
            self._warn(f"ndtracker dropped the oldest {dropped} {name} rows of run {self.run_id}: "
                       f"more than max_buffer_rows={self.limit} rows waited while writing to "
                       f"{self.run_dir} failed")  # fmt: skip

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self._warn(message)

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


_OPEN: set[_Run] = set()  # runs whose final flush is still to come


@atexit.register
def _close_open_runs() -> None:
    """Finish every run at interpreter exit; a finished run leaves the set, so nothing stays alive."""
    for run in list(_OPEN):
        run.close()


def _flush_open_runs() -> None:
    """Write every open run's buffered rows (SIGTERM, SIGHUP): what ``close()`` would write."""
    for run in list(_OPEN):
        run.flush_from_signal()


class RunWriter:
    """Write one run's rows to a run directory: buffered, flushed in the background, crash-safe.

    ``append`` extends an in-memory buffer; a daemon thread writes the buffer as a new Parquet part
    every ``flush_secs`` (when there is something to write), as do ``flush()``, ``close()``,
    interpreter exit and SIGTERM or SIGHUP (see `ndtracker.store.signals`). When more than
    ``max_buffer_rows`` rows of a table wait, ``append`` writes them before it returns
    (back-pressure), so no row is dropped while the disk works. Small parts are merged on a thread
    of their own as they accumulate (16 parts of one size make one of the next; a failed merge is
    retried with a growing delay), and ``close()`` merges the run into one part per table. A failed
    write (disk full, the directory deleted) warns once per table, keeps the rows and retries at the
    next flush; while writing fails the buffer keeps the newest ``max_buffer_rows`` rows per table,
    dropping the oldest (counted, and reported by a warning once writing works again). A deleted
    run directory is recreated, and the run's ``run.json`` entry restored, with one warning.

    Args:
        log_dir: The run directory; created if missing. Other runs in it are left untouched.
        run_info: JSON-serialisable facts about the run (options, layers, model...) stored in its
            ``run.json`` entry next to ``run_id``, ``started`` (ISO 8601, UTC) and
            ``ndtracker_version``. Values JSON cannot hold are stored as strings.
        flush_secs: Seconds between background flushes (default 5.0); must be positive.
        max_buffer_rows: Rows buffered per table (default 200 000): beyond it ``append`` writes
            them at once while the disk works, and the oldest are dropped while writing fails.
        rank: The global rank of this process in a torch.distributed job, stored in the ``rank``
            column of every row (default None: not distributed).
        run_id: Join this run, already registered in ``log_dir/run.json`` by another rank of the
            job, instead of registering a new one (``run_info`` is then not stored, and run.json
            is left to that rank). Parts are numbered from ``rank * RANK_SEQ_SPAN``, so no two
            ranks ever write one file and each rank compacts only its own parts.

    Raises:
        ValueError: ``log_dir`` is a file or cannot be created or written (a full disk
            included), or an option is invalid.
        SchemaError: ``log_dir`` holds runs written with a newer schema.
        NdtrackerError: ``log_dir/run.json`` (or its lock file) exists but is not a valid run file.

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
        rank: int | None = None,
        run_id: str | None = None,
    ) -> None:
        _check_options(run_info, flush_secs, max_buffer_rows)
        run_dir = validate_log_dir(log_dir)
        try:
            open_run_dir(run_dir)
            entry = register_run(run_dir, dict(run_info)) if run_id is None else None
        except OSError as error:  # a full disk: say so in one line, naming the directory
            raise ValueError(f"log_dir={str(log_dir)!r} cannot be written ({error}); free some "
                             "space or pass a directory you can write to") from None  # fmt: skip
        identity = _Identity(run_id or entry["run_id"], rank)  # type: ignore[index]
        self._run = _Run(run_dir, entry, float(flush_secs), max_buffer_rows, identity)
        signals.install(_flush_open_runs)
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
                mappings are read at the next flush, so do not modify them after appending. When
                more than ``max_buffer_rows`` rows wait, they are written before this returns.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._run.add("metrics", rows)

    def append_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer event rows (jumps and phase changes), like `append`.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._run.add("events", rows)

    def append_similarity(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer layer-similarity rows (``step, layer_a, layer_b, space, cka, ...``), like `append`.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._run.add("similarity", rows)

    def append_classes(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer class-geometry rows (the ``classes`` table), like `append`.

        Raises:
            ValueError: The writer is closed.
        """
        self._check_open()
        self._run.add("classes", rows)

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


def _check_options(run_info: Any, flush_secs: Any, max_buffer_rows: Any) -> None:
    if not isinstance(run_info, Mapping):
        raise TypeError(f"run_info must be a mapping, got {type(run_info).__name__}")
    positive_seconds("flush_secs", flush_secs)
    positive_int("max_buffer_rows", max_buffer_rows)
