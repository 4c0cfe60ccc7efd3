"""The names ndtracker writes and accepts, defined once: metrics, spaces, estimators, statuses.

Torch-free: the tracker, the store's schema, the reports and the CLI all import these tuples, so a
column, a CLI choice and an error message can never disagree on a name.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "METRICS", "FULL_SPECTRUM", "DEFAULT_METRICS", "SPACES", "ESTIMATORS", "STATUSES", "OK",
    "Metric", "Space", "Estimator", "Status",
]  # fmt: skip

Metric = Literal["stable_rank", "participation_ratio", "effective_rank", "energy90"]
Space = Literal["activation", "weight"]
Estimator = Literal["exact", "randomized"]
Status = Literal["ok", "nonfinite", "zero", "empty", "failed"]

METRICS: tuple[str, ...] = ("stable_rank", "participation_ratio", "effective_rank", "energy90")
"""Every metric, in column order."""

FULL_SPECTRUM: frozenset[str] = frozenset({"effective_rank", "energy90"})
"""The metrics that need every eigenvalue (the streaming estimator gives only the others)."""

DEFAULT_METRICS: tuple[str, ...] = ("stable_rank",)
"""What a Tracker measures unless told otherwise."""

SPACES: tuple[str, ...] = ("activation", "weight")
"""What a layer is measured in: its output (rows x features) or its weight (out x in)."""

ESTIMATORS: tuple[str, ...] = ("exact", "randomized")
"""How a spectrum was measured (the ``estimator`` column)."""

OK = "ok"
STATUSES: tuple[str, ...] = (OK, "nonfinite", "zero", "empty", "failed")
"""The ``status`` column: ``ok``, or why the row's metrics are NaN."""
