"""Compare one metric of two runs on the layers both tracked (``ndtracker compare``).

Both runs are reported with :func:`ndtracker.report`, restricted to their common layers, and joined
into one :class:`~ndtracker.reports.Comparison`, which the terminal and HTML views render.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ndtracker.reports.build import report
from ndtracker.reports.model import Comparison, Report
from ndtracker.vocabulary import Metric, Space


def compare(
    run_a: str | Path,
    run_b: str | Path,
    *,
    metric: Metric = "stable_rank",
    layers: str | Sequence[str] | None = None,
    space: Space | None = None,
    run_id_a: str | None = None,
    run_id_b: str | None = None,
    progress: bool = False,
    workers: int | None = 1,
) -> Comparison:
    """Compare one metric between two runs, on the layers both runs tracked.

    Args:
        run_a: The first run directory.
        run_b: The second run directory (may be the same directory with another ``run_id_b``).
        metric: The metric column to compare (default ``"stable_rank"``).
        layers: A glob pattern or a list of names or patterns (default: all common layers).
        space: ``"activation"`` or ``"weight"`` only (default: both).
        run_id_a: Which run of ``run_a`` (default: its latest).
        run_id_b: Which run of ``run_b`` (default: its latest).
        progress: Show a transient progress bar on stderr while loading and analysing.
        workers: Processes for detection, as in :func:`ndtracker.report` (default 1).

    Returns:
        The comparison, renderable to the terminal and to HTML.

    Raises:
        RunNotFoundError, SchemaError, NdtrackerError, ValueError: as ``report``, for either
            run; ValueError also when the two runs have no layer in common.
    """
    options = {"metric": metric, "layers": layers, "space": space, "progress": progress}
    a = report(run_a, run_id=run_id_a, workers=workers, **options)
    b = report(run_b, run_id=run_id_b, workers=workers, **options)
    in_b = set(b.layers)
    common = tuple(layer for layer in a.layers if layer in in_b)
    if not common:
        raise ValueError(
            f"runs {a.run_id} and {b.run_id} have no layer in common; "
            f"first has {', '.join(a.layers[:5])}; second has {', '.join(b.layers[:5])}"
        )
    a, b = _restrict(a, common), _restrict(b, common)
    return Comparison(a, b, common, _rows(a, b))


def _restrict(rep: Report, layers: tuple[str, ...]) -> Report:
    keep = set(layers)
    tables = {name: _keep(getattr(rep, name), keep) for name in ("summary", "phases", "jumps")}
    series = tuple(s for s in rep.series if s.layer in keep)
    return dataclasses.replace(rep, layers=layers, series=series, **tables)


def _keep(frame: pd.DataFrame, layers: set[str]) -> pd.DataFrame:
    return frame[frame["layer"].isin(layers)]


def _rows(a: Report, b: Report) -> pd.DataFrame:
    keys = ["layer", "space"]
    left = a.summary[keys + ["first", "last"]].assign(phases=_kinds(a))
    right = b.summary[keys + ["first", "last"]].assign(phases=_kinds(b))
    table = left.merge(right, on=keys, how="inner", suffixes=("_a", "_b"))
    return table[keys + ["first_a", "last_a", "first_b", "last_b", "phases_a", "phases_b"]]


def _kinds(rep: Report) -> list[str]:
    sequences = rep.phases.groupby(["layer", "space"], sort=False)["kind"].agg(" > ".join)
    keys = zip(rep.summary["layer"], rep.summary["space"])
    return [sequences.get(key, "-") for key in keys]
