"""Safe file primitives of the store: atomic writes, regular-file opens, durable folders, stale temps.

Everything ndtracker writes or reads in a run directory goes through here, so that a hostile or
damaged directory can neither hang a reader nor redirect a write:

* `atomic_write` creates its temporary file exclusively, under an unpredictable name, without
  following a symlink (``O_EXCL | O_NOFOLLOW``), writes through that descriptor, fsyncs it and
  renames it into place: a symlink planted at the target is replaced, never written through.
* `open_regular` opens without following a symlink and without blocking (``O_NONBLOCK``: a FIFO
  would otherwise block ``open`` forever), then checks ``fstat`` says a regular file.
* `make_dir` creates folders and fsyncs their parents, so a new folder survives a power cut.
* `clean_temporaries` removes the temporary files a crashed writer left behind, never those of a
  writer that is still running.

This module imports no torch.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "NotRegularFileError", "RESOURCE_ERRORS", "atomic_write", "open_regular", "make_dir", "fsync_dir",
    "clean_temporaries", "TEMP_NAME", "STALE_SECS",
]  # fmt: skip

TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")  # ".<target>.<pid>-<random>.tmp"
STALE_SECS = 24 * 3600.0  # a temporary file this old is removed even if its pid is alive (reused)
_ORPHAN_SECS = 60.0  # a dead pid's temporary file is removed once this old (clock skew, NFS)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)


RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # the reader's limits, not damage


class NotRegularFileError(OSError):
    """A path that should be a regular file is a symlink, a FIFO, a device or a folder."""


def temp_path(target: Path) -> Path:
    """Return a fresh, unpredictable temporary name next to ``target``, hidden from readers."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_write(target: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``target`` atomically once the block succeeds.

    The file is created exclusively under a fresh hidden name (never through a symlink), fsynced and
    renamed over ``target``; on any error it is removed and ``target`` is left as it was.

    Raises:
        OSError: The folder cannot be written (full disk, deleted folder, permissions).
    """
    tmp = temp_path(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
    handle = os.fdopen(os.open(tmp, flags, 0o666), "wb")
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(target.parent)


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file, never following a symlink or blocking.

    Raises:
        NotRegularFileError: ``path`` is a symlink, FIFO, socket, device or folder.
        FileNotFoundError: ``path`` does not exist.
        OSError: It cannot be opened (permissions, too many open files...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):  # a symlink (or a socket)
            raise NotRegularFileError(error.errno, "not a regular file (a symlink or a socket)",
                                      str(path)) from None  # fmt: skip
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(errno.EINVAL, f"not a regular file ({_kind(mode)})", str(path))
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a device or special file")


def make_dir(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each parent so the new entry is durable.

    Raises:
        OSError: A folder cannot be created (a file is in the way, permissions, full disk).
    """
    missing = []
    for path in (folder, *folder.parents):
        if os.path.isdir(path):
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            continue
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_temporaries(folder: Path, now: float | None = None) -> int:
    """Remove the temporary files a crashed writer left in ``folder``; return how many.

    A temporary file is removed when the process named in it is gone (and the file is a minute
    old), or when it is older than `STALE_SECS` whatever its pid: a writer still running keeps its
    in-flight file. Only regular files matching the temporary name pattern are touched.
    """
    now = time.time() if now is None else now
    removed = 0
    for name in _names(folder):
        match = TEMP_NAME.match(name)
        if match is None:
            continue
        try:
            info = os.lstat(folder / name)
        except OSError:
            continue
        age = now - info.st_mtime
        orphan = not _alive(int(match.group(1))) and age > _ORPHAN_SECS
        if stat.S_ISREG(info.st_mode) and (orphan or age > STALE_SECS):
            removed += _unlink_quietly(folder / name)
    return removed


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists under another user, or cannot tell: keep its file
    return True


def _unlink_quietly(path: Path) -> int:
    try:
        os.unlink(path)
    except OSError:
        return 0
    return 1
