"""What the Lightning and Hugging Face callbacks share: the check of their Tracker options."""

from __future__ import annotations

import inspect
from typing import Any

from ndtracker.tracking import Tracker

SET_BY_CALLBACK = ("model", "start_step")
"""Tracker arguments a callback sets itself: the framework's model and global step."""


def check_tracker_options(owner: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if each names a Tracker option a callback may pass, else a TypeError.

    Values are checked by the Tracker when the callback builds it, at the start of training.
    """
    accepted = [name for name in inspect.signature(Tracker).parameters if name not in SET_BY_CALLBACK]
    for name in options:
        if name in SET_BY_CALLBACK:
            raise TypeError(f"{owner} sets {name}= itself (the framework's model and global step); "
                            f"do not pass it")  # fmt: skip
        if name not in accepted:
            raise TypeError(f"{owner} got an unknown Tracker option {name!r}; accepted: {accepted}")
    return dict(options)

