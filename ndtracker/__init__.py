"""ndtracker: watch the effective dimensionality of every layer while a PyTorch model trains.

Three lines in an existing training loop::

    tracker = ndtracker.Tracker(model, every=5, log_dir="runs/exp1")
    ...                                   # forward, backward, optimizer.step()
    tracker.step(loss=loss)
    tracker.close()

Then ``ndtracker.load("runs/exp1")`` (a pandas DataFrame) or ``ndtracker report runs/exp1``.

``import ndtracker`` does not import torch: ``Tracker`` is loaded on first use, so the offline path
(``load``, ``report``, the CLI) runs where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError
from ndtracker.version import __version__

__all__ = [
    "Tracker",
    "Probe",
    "load",
    "report",
    "compare",
    "NdtrackerError",
    "RunNotFoundError",
    "SchemaError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports import compare, report
    from ndtracker.store import load
    from ndtracker.tracking import Probe, Tracker

# The reports live in `reports/`, not `report/`: a subpackage named like the function would shadow
# `ndtracker.report` with a module object as soon as anything imported it.
_LAZY = {
    "Tracker": "ndtracker.tracking",
    "Probe": "ndtracker.tracking",
    "load": "ndtracker.store",
    "report": "ndtracker.reports",
    "compare": "ndtracker.reports",
}


def __getattr__(name: str) -> Any:
    """Import the public callables on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ndtracker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
