"""Which runs of a run directory a reader means: the latest (with the runs it resumes), some, or all.

A directory can hold several runs (each Tracker opens a new one). Readers never mix them silently:
by default they read the latest run, stitched to the runs it resumes (a Tracker built with
``start_step=`` in a directory that already holds a run records ``"resumes": <that run's id>`` in
``run.json``); ``run_id="all"`` reads every run; a list or a comma-separated string reads those runs,
stitched in start order. Where runs are stitched, an earlier run's rows from the step at which the
next one starts are left out: the later run measured those steps again after its restart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ndtracker.store.layout import find_run

__all__ = ["ALL", "Selection", "select_runs"]

ALL = "all"


@dataclass(frozen=True)
class Selection:
    """The runs a read covers, oldest first, and where each one's rows stop.

    Attributes:
        runs: The selected ``run.json`` entries, oldest first.
        until: Per selected run, the first step it does not cover (the next stitched run's
            ``start_step``), or None: read all of its rows.
        others: Run ids of the directory left out (for the caller's notice).
        stitched: Whether the runs are read as one resumed run.
    """

    runs: tuple[dict[str, Any], ...]
    until: tuple[int | None, ...]
    others: tuple[str, ...]
    stitched: bool

    @property
    def run_ids(self) -> list[str]:
        """The selected run ids, oldest first."""
        return [str(run.get("run_id")) for run in self.runs]


def select_runs(
    entries: list[dict[str, Any]], run_id: str | Sequence[str] | None, run_dir: str | os.PathLike
) -> Selection:
    """Resolve ``run_id`` against the directory's runs (``entries``, oldest first).

    Args:
        entries: The runs of the directory, from :func:`ndtracker.store.read_run_info`.
        run_id: None (the latest run with the runs it resumes), ``"all"``, one id, a list of ids or
            a comma-separated string of ids (stitched as one run, in start order).
        run_dir: The directory, for messages.

    Raises:
        RunNotFoundError: The directory holds no run, or an id is not one of its runs.
        TypeError: ``run_id`` is not a string, a list of strings or None.
    """
    if run_id is None:
        chosen = _resume_chain(entries, find_run(entries, None, run_dir))
    elif run_id == ALL:
        chosen = list(entries)
    else:
        chosen = [find_run(entries, one, run_dir) for one in _ids(run_id)]
        chosen.sort(key=lambda run: str(run.get("started", "")))
    stitched = run_id != ALL and len(chosen) > 1
    picked = {id(run) for run in chosen}
    others = tuple(str(run.get("run_id")) for run in entries if id(run) not in picked)
    until = tuple(_start_step(nxt) for nxt in chosen[1:]) + (None,) if stitched else (None,) * len(chosen)
    return Selection(tuple(chosen), until, others, stitched)


def _ids(run_id: str | Sequence[str]) -> list[str]:
    if isinstance(run_id, str):
        return [part.strip() for part in run_id.split(",") if part.strip()]
    if isinstance(run_id, Sequence) and all(isinstance(one, str) for one in run_id) and run_id:
        return list(run_id)
    raise TypeError(f"run_id must be a run id, a list of run ids, 'all' or None, got {run_id!r}")


def _resume_chain(entries: list[dict[str, Any]], last: dict[str, Any]) -> list[dict[str, Any]]:
    """``last`` and the runs it resumes, following ``"resumes"`` links, oldest first (no cycles)."""
    by_id = {str(run.get("run_id")): run for run in entries}
    chain, seen = [last], {str(last.get("run_id"))}
    while (parent := chain[-1].get("resumes")) in by_id and parent not in seen:
        seen.add(parent)
        chain.append(by_id[parent])
    return chain[::-1]


def _start_step(run: dict[str, Any]) -> int | None:
    options = run.get("options")
    step = options.get("start_step") if isinstance(options, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
