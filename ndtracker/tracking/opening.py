"""Opening a Tracker's run: its ``run.json`` entry and its writer (one per job, or per rank).

The run directory is checked and registered here, at construction, so a ``log_dir`` that is a
file or not writable raises before training starts. A run built with ``start_step > 0`` in a
directory that already holds a run is linked to the latest one there (``"resumes"``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

from ndtracker import store
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.tracking.probe import ProbeRunner
from ndtracker.version import __version__

__all__ = ["open_writer", "run_info"]


def run_info(
    model: nn.Module, options: Options, writing: dict[str, Any], layers: list[TrackedLayer],
    probe: ProbeRunner | None, parallel: Any,
) -> dict[str, Any]:  # fmt: skip
    """The run's ``run.json`` entry: the model, the options (the probe's shapes), the layers, the versions."""
    described = {**options.as_dict(), **writing, "probe": None if probe is None else probe.describe()}
    info = {
        "model": type(model).__name__, "options": described, "layers": [layer.info() for layer in layers],
        "ndtracker_version": __version__, "torch_version": torch.__version__,
    }  # fmt: skip
    if parallel is not None:
        info["distributed"] = parallel.info()
    return info


def open_writer(log_dir: str | os.PathLike | None, info: dict[str, Any], writing: dict[str, Any], parallel=None):
    """Register the run in ``log_dir`` (default ``runs/ndtracker-<time>``) and open its writer.

    Raises:
        TypeError: ``log_dir`` is not a path or None.
        ValueError: ``log_dir`` is a file or not writable (on every rank of a distributed job).
    """
    if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"log_dir must be a path (a str or os.PathLike) or None, got {log_dir!r}")
    if log_dir is None:
        log_dir = time.strftime("runs/ndtracker-%Y%m%d-%H%M%S")
    if parallel is not None:  # one rank registers the run; the others join it or write nothing
        amend = resumed if writing["start_step"] > 0 else None
        return parallel.open_writer(log_dir, info, writing, amend)
    path = store.validate_log_dir(log_dir)
    if writing["start_step"] > 0:
        info = {**info, **resumed(path)}
    return store.RunWriter(
        path, run_info=info, flush_secs=writing["flush_secs"], max_buffer_rows=writing["max_buffer_rows"],
    )  # fmt: skip


def resumed(path: os.PathLike) -> dict[str, str]:
    """``{"resumes": <latest run id>}`` when ``path`` already holds a run (a resumed run continues it)."""
    try:
        runs = store.read_run_info(path)
    except Exception:  # no run yet, or an unreadable run.json: nothing to link to
        return {}
    return {"resumes": str(runs[-1].get("run_id"))} if runs else {}
