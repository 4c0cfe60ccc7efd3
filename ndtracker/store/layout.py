"""The run directory on disk: its folders, part names, atomic writes, the lock and ``run.json``.

A run directory holds any number of runs, each with its own run id::

    RUN_DIR/run.json                                   # {"schema_version": 1, "runs": [...]}
    RUN_DIR/metrics/part-<run_id>-<seq>.parquet        # one row per (step, layer, space)
    RUN_DIR/metrics/part-<run_id>-<first>-<last>.parquet   # a compacted part: seqs first..last
    RUN_DIR/events/part-<run_id>-<seq>.parquet         # jumps and phase changes

Every file is written under a hidden temporary name (``.<name>.<pid>-<thread>.tmp``), flushed to disk
and renamed into place, so a crash at any moment leaves only complete parts (plus temporary files,
which every reader ignores). A compacted part supersedes the parts whose seq falls in its range:
the reader skips those, so a crash between writing a compacted part and deleting its sources neither
loses nor duplicates a row. The parts are plain Parquet, readable by ``pandas.read_parquet``,
``pyarrow.dataset`` or DuckDB (``SELECT * FROM 'RUN_DIR/metrics/*.parquet'``), which skip the
temporary files; only those readers see duplicates, and only inside that crash window.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError
from ndtracker.store.schema import SCHEMA_VERSION, SCHEMAS
from ndtracker.version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: run.json updates are not locked
    fcntl = None

__all__ = [
    "PART_NAME", "validate_log_dir", "part_name", "atomic_write", "fsync_dir", "register_run",
    "read_run_info", "find_run", "list_parts",
]  # fmt: skip

PART_NAME = re.compile(r"^part-(\d{8}-\d{6}-[0-9a-f]+)-(\d+)(?:-(\d+))?\.parquet$")


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


def part_name(run_id: str, span: tuple[int, int]) -> str:
    first, last = span
    seqs = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
    return f"part-{run_id}-{seqs}.parquet"


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
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
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
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


def register_run(run_dir: Path, run_info: Mapping[str, Any], keep_id: bool = False) -> dict[str, Any]:
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
        with atomic_write(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return entry


def _new_entry(run_info: Mapping[str, Any], taken: set[Any]) -> dict[str, Any]:
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


def find_run(runs: list[dict[str, Any]], run_id: str | None, run_dir: str | os.PathLike) -> dict[str, Any]:
    """The entry of ``run_id`` among ``runs`` (from :func:`read_run_info`), or the latest for None.

    Raises:
        RunNotFoundError: ``runs`` is empty, or ``run_id`` is not one of them (the message lists them).
    """
    if not runs:
        raise RunNotFoundError(f"{str(run_dir)!r} holds no ndtracker run (no run.json)")
    if run_id is None:
        return max(runs, key=lambda run: str(run.get("started", "")))
    for run in runs:
        if run.get("run_id") == run_id:
            return run
    ids = ", ".join(str(run.get("run_id")) for run in runs)
    raise RunNotFoundError(f"run_id={run_id!r} is not in {str(run_dir)!r}; its runs are: {ids}")


def _implied_run(run_id: str) -> dict[str, Any]:
    try:
        started = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return {"run_id": run_id, "started": ""}
    return {"run_id": run_id, "started": started.isoformat(timespec="microseconds")}


def _part_runs(root: Path) -> set[str]:
    return {match.group(1) for name in SCHEMAS for _, match in list_parts(root / name) if match}


def list_parts(folder: Path) -> list[tuple[str, re.Match[str] | None]]:
    """Return the Parquet files in ``folder`` (temporary ones excluded), with their name's parse."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [name for name in names if name.endswith(".parquet") and not name.startswith((".", "_"))]
    return [(name, PART_NAME.match(name)) for name in sorted(names)]
