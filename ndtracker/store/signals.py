"""Flush open runs on SIGTERM and SIGHUP, then let the signal do what it did before.

A batch scheduler or a closed terminal ends a training process with SIGTERM or SIGHUP; without a
handler Python dies at once and the rows buffered since the last flush are lost (as with SIGKILL,
which nothing can catch). `install` puts a handler in front of the one in place: it writes every
open run's buffered rows (what ``close()`` writes, without the final merge), then calls the previous
Python handler, or, if there was none, restores the default action and raises the signal again, so
the process ends exactly as it would have (same signal, same exit status). A signal that was
ignored (``nohup``) stays ignored. Handlers can only be set from the main thread: from another
thread `install` does nothing. This module imports no torch.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SIGNALS", "install"]

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def install(flush: Callable[[], None]) -> None:
    """Put a handler that calls ``flush`` in front of each of `SIGNALS` (once; main thread only).

    Args:
        flush: Writes what is buffered; it must never raise.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None) or getattr(previous, "ndtracker_flush", False):
            continue
        try:
            signal.signal(signum, _handler(flush, previous))
        except (ValueError, OSError):  # not allowed here (an embedded interpreter)
            continue


def _handler(flush: Callable[[], None], previous: Any) -> Callable[[int, Any], None]:
    def handle(signum: int, frame: Any) -> None:
        try:
            flush()
        finally:
            _chain(signum, frame, previous)

    handle.ndtracker_flush = True  # type: ignore[attr-defined]
    return handle


def _chain(signum: int, frame: Any, previous: Any) -> None:
    """Do what the signal did before our handler: call the previous one, or the default action."""
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
