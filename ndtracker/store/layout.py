"""The run directory on disk: its folders, part names, the lock and ``run.json``.

A run directory holds any number of runs, each with its own run id::

    RUN_DIR/run.json                                   # {"schema_version": 1, "runs": [...]}
    RUN_DIR/metrics/part-<run_id>-<seq>.parquet        # one row per (step, layer, space)
    RUN_DIR/metrics/part-<run_id>-<first>-<last>.parquet   # a compacted part: seqs first..last
    RUN_DIR/events/part-<run_id>-<seq>.parquet         # jumps and phase changes

Every file is written under a hidden temporary name (``.<name>.<pid>-<random>.tmp``, see
:mod:`ndtracker.store.files`), flushed to disk and renamed into place, so a crash at any moment leaves
only complete parts (plus temporary files, which every reader here ignores and the next writer to
open the directory removes). Both folders exist as soon as a writer opens the directory. A compacted part supersedes the parts whose seq falls in its range:
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
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError
from ndtracker.store.files import RESOURCE_ERRORS, atomic_write, clean_temporaries, make_dir, open_regular
from ndtracker.store.schema import SCHEMA_VERSION, SCHEMAS
from ndtracker.version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: run.json updates are not locked
    fcntl = None

__all__ = [
    "PART_NAME", "validate_log_dir", "open_run_dir", "part_name", "register_run",
    "ensure_registered", "read_run_info", "find_run", "list_parts",
]  # fmt: skip

PART_NAME = re.compile(r"^part-(\d{8}-\d{6}-[0-9a-f]+)-(\d+)(?:-(\d+))?\.parquet$")


def validate_log_dir(log_dir: str | os.PathLike) -> Path:
    """Check that ``log_dir`` can hold runs, creating it (and its parents) when missing.

    Args:
        log_dir: The run directory a tracker will write to.

    Returns:
        The directory as a ``Path``.

    Raises:
        ValueError: ``log_dir`` is an existing file, or cannot be created or written (a full disk
            included); the message names the path, the reason and what to do.
    """
    path = Path(log_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"log_dir={str(log_dir)!r} is a file, not a directory; pass the path of a "
                         "directory (it is created if missing)")  # fmt: skip
    try:
        make_dir(path)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ValueError(f"log_dir={str(log_dir)!r} cannot be created or written ({error}); pass a "
                         "directory you can write to") from None  # fmt: skip
    return path


def open_run_dir(run_dir: Path) -> None:
    """Make sure ``metrics/`` and ``events/`` exist and hold no stale temporary file.

    Globs such as DuckDB's ``'RUN_DIR/events/*.parquet'`` then work before the first event, and the
    temporary files of a crashed writer (which some readers do not skip) are gone.

    Raises:
        OSError: A folder cannot be created.
    """
    for name in SCHEMAS:
        make_dir(run_dir / name)
        clean_temporaries(run_dir / name)
    clean_temporaries(run_dir)


def part_name(run_id: str, span: tuple[int, int]) -> str:
    first, last = span
    seqs = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
    return f"part-{run_id}-{seqs}.parquet"


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` across processes (where ``fcntl`` exists)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = run_dir / ".run.json.lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        raise NdtrackerError(f"cannot open the lock file {path} ({error}); remove it if it is a "
                             "symlink or not a regular file") from None  # fmt: skip
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NdtrackerError(f"the lock file {path} is not a regular file; remove it")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def register_run(run_dir: Path, run_info: Mapping[str, Any]) -> dict[str, Any]:
    """Add a new run's entry to ``run_dir/run.json`` (atomically, under a lock) and return it.

    Args:
        run_dir: The run directory (it exists).
        run_info: The facts to store; ``run_id``, ``started`` and ``ndtracker_version`` are set here.

    Raises:
        NdtrackerError: ``run.json`` or the lock file is damaged (neither is overwritten).
        SchemaError: ``run.json`` says a newer schema version.
        OSError: ``run.json`` cannot be written.
    """
    with _locked(run_dir):
        doc = _read_doc(run_dir, strict=True) or {"schema_version": SCHEMA_VERSION, "runs": []}
        taken = {run.get("run_id") for run in doc["runs"]} | _part_runs(run_dir)
        entry = _new_entry(run_info, taken)
        doc["runs"].append(entry)
        _write_doc(run_dir, doc)
    return entry


def ensure_registered(run_dir: Path, entry: Mapping[str, Any]) -> bool:
    """Put ``entry`` back into ``run.json`` if it is missing (the file or the folder was deleted).

    Returns:
        Whether it had to be restored.

    Raises:
        NdtrackerError: ``run.json`` is damaged (it is never overwritten then).
        OSError: The file cannot be written.
    """
    with _locked(run_dir):
        doc = _read_doc(run_dir, strict=True) or {"schema_version": SCHEMA_VERSION, "runs": []}
        if any(run.get("run_id") == entry["run_id"] for run in doc["runs"]):
            return False
        doc["runs"].append(dict(entry))
        _write_doc(run_dir, doc)
    return True


def _write_doc(run_dir: Path, doc: Mapping[str, Any]) -> None:
    text = json.dumps(doc, indent=1, default=str) + "\n"  # ASCII: non-ASCII text is escaped
    with atomic_write(run_dir / "run.json") as handle:
        handle.write(text.encode("ascii"))


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

    Damaged means anything but a regular file holding the documented structure: a symlink, a FIFO,
    text that is not JSON (or nested too deeply to parse), a ``schema_version`` that is not an
    integer, ``runs`` that is not a list of entries with a ``run_id`` string, or an entry whose
    ``options`` is not an object or whose ``layers`` is not a list of objects.

    Raises:
        SchemaError: The file says a newer schema version.
        NdtrackerError: ``strict`` and the file is damaged; the message names it and what is wrong.
    """
    path = run_dir / "run.json"
    try:
        doc = _parse_doc(_read_bytes(path))
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in RESOURCE_ERRORS:  # not the file's fault: never call it damaged
            raise NdtrackerError(f"cannot open {path}: {error.strerror}; raise the open-files "
                                 "limit (ulimit -n) or close files and try again") from None  # fmt: skip
        return _damaged(path, error.strerror or str(error), strict)
    except (ValueError, TypeError, RecursionError, MemoryError) as error:
        return _damaged(path, str(error), strict)
    if doc["schema_version"] > SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema_version {doc['schema_version']}, newer than "
                          f"{SCHEMA_VERSION}, the newest this ndtracker reads; upgrade ndtracker")  # fmt: skip
    return doc


def _damaged(path: Path, why: str, strict: bool) -> None:
    """Raise (``strict``) or warn that ``path`` is not a valid run file."""
    if strict:
        raise NdtrackerError(f"{path} is not a valid ndtracker run file ({why}); move it away or "
                             "choose another log_dir")  # fmt: skip
    warnings.warn(f"ignoring {path}: not a valid ndtracker run file ({why})", RuntimeWarning,
                  stacklevel=5)


MAX_RUN_FILE = 64 * 2**20  # bytes; a larger run.json is not one ndtracker wrote


def _read_bytes(path: Path) -> bytes:
    with open_regular(path) as handle:
        data = handle.read(MAX_RUN_FILE + 1)
    if len(data) > MAX_RUN_FILE:
        raise ValueError(f"larger than {MAX_RUN_FILE} bytes")
    return data


def _parse_doc(data: bytes) -> dict[str, Any]:
    """Parse and check the structure of ``run.json``; ValueError says what is wrong."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # not UTF-8, not JSON
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise ValueError("the top level is not an object")
    version = doc.setdefault("schema_version", 1)
    if type(version) is not int:
        raise ValueError(f"schema_version is {_short(version)}, not an integer")
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise ValueError(f"'runs' is {_short(runs)}, not a list")
    for index, run in enumerate(runs):
        problem = _entry_problem(run)
        if problem:
            raise ValueError(f"runs[{index}]: {problem}")
    return doc


def _entry_problem(run: Any) -> str | None:
    """What is wrong with one run entry, or None."""
    if not isinstance(run, dict):
        return f"{_short(run)} is not an object"
    if not isinstance(run.get("run_id"), str) or not run["run_id"]:
        return f"run_id is {_short(run.get('run_id'))}, not a non-empty string"
    options = run.get("options", {})
    if not isinstance(options, dict):
        return f"options is {_short(options)}, not an object"
    metrics = options.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(name, str) for name in metrics):
        return f"options.metrics is {_short(metrics)}, not a list of names"
    layers = run.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return f"layers is {_short(layers)}, not a list of objects"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        raise RunNotFoundError(f"{str(run_dir)!r} holds no ndtracker run (no valid run.json and "
                               f"no parts); {_where_runs_are(root)}")  # fmt: skip
    return sorted(runs, key=lambda run: str(run.get("started", "")))


def _where_runs_are(root: Path) -> str:
    children = child_runs(root)
    if not children:
        return "pass the log_dir a Tracker wrote to"
    listed = ", ".join(str(root / name) for name in children)
    return f"the runs below it are in: {listed}; pass one of them"


def child_runs(folder: str | os.PathLike, limit: int = 12) -> list[str]:
    """Names of the sub-folders of ``folder`` that hold a run (a ``run.json``), sorted, at most ``limit``."""
    try:
        children = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return [name for name in children if (Path(folder) / name / "run.json").is_file()][:limit]


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
