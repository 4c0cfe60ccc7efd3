"""Where a sample's rows go besides the Parquet logs: what a sink receives, and the fan-out.

A *sink* is any object with ``write(step, rows)`` and ``close()``. The Tracker calls ``write`` once
per sample, after the rows were handed to the Parquet writer, with the sample's step and its rows
(the dicts of the logged columns, one per layer and space, see :class:`~ndtracker.Tracker`). The
Parquet logs stay the source of truth: a sink that raises is warned about once and skipped; it
never stops training nor loses a row from the logs.

Sinks for TensorBoard, Weights & Biases and MLflow live in :mod:`ndtracker.integrations`; they all
name their scalars with :func:`scalars`: ``ndtracker/{space}/{metric}/{layer}``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from ndtracker.vocabulary import METRICS

__all__ = ["Sink", "SinkFanout", "check_sinks", "scalars", "TAG_PREFIX"]

TAG_PREFIX = "ndtracker"
"""The first part of every scalar tag a sink writes."""


@runtime_checkable
class Sink(Protocol):
    """Receives every sample's rows; see the module docstring."""

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Take one sample's rows (logged at training step ``step``)."""

    def close(self) -> None:
        """Flush and release what the sink opened (called once, by ``Tracker.close()``)."""


def check_sinks(sinks: Sink | Sequence[Sink] | None) -> tuple[Sink, ...]:
    """The sinks as a tuple, or a TypeError naming the entry without ``write``/``close`` methods."""
    if sinks is None:
        return ()
    if isinstance(sinks, Sink):
        sinks = [sinks]
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
        raise TypeError(f"sinks must be a list of objects with write(step, rows) and close() methods, "
                        f"got {sinks!r}")  # fmt: skip
    checked = tuple(sinks)
    for sink in checked:
        if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
            raise TypeError(f"sinks entries need write(step, rows) and close() methods; "
                            f"{sink!r} ({type(sink).__name__}) lacks one")  # fmt: skip
    return checked


def scalars(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The finite metric values of ``rows`` by tag ``ndtracker/{space}/{metric}/{layer}``.

    Metrics that were not measured (null) or are NaN (see the ``status`` column) are left out:
    the Parquet logs keep them.

    Example:
        >>> scalars([{"layer": "fc1", "space": "weight", "stable_rank": 2.5, "energy90": None}])
        {'ndtracker/weight/stable_rank/fc1': 2.5}
    """
    tags: dict[str, float] = {}
    for row in rows:
        for metric in METRICS:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                tags[f"{TAG_PREFIX}/{row['space']}/{metric}/{row['layer']}"] = float(value)
    return tags


class SinkFanout:
    """Forward each sample to every sink; warn once per failing sink and carry on.

    A sink that raised is still called on later samples (a lost connection may come back); only
    its first failure is warned about.

    Args:
        sinks: Objects with ``write(step, rows)`` and ``close()``, or None.

    Raises:
        TypeError: If an entry lacks ``write`` or ``close``.
    """

    def __init__(self, sinks: Sink | Sequence[Sink] | None) -> None:
        self._sinks = check_sinks(sinks)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self._sinks)

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Give ``rows`` to every sink; never raises."""
        for i, sink in enumerate(self._sinks):
            try:
                sink.write(step, rows)
            except Exception as error:  # a sink never stops training nor the Parquet log
                self._warn_once(i, f"failed at step {step}: {error!r}")

    def close(self) -> None:
        """Close every sink; never raises."""
        for i, sink in enumerate(self._sinks):
            try:
                sink.close()
            except Exception as error:
                self._warn_once(i, f"failed to close: {error!r}")

    def _warn_once(self, index: int, message: str) -> None:
        if index in self._warned:
            return
        self._warned.add(index)
        name = type(self._sinks[index]).__name__
        warnings.warn(f"ndtracker: sink {name} {message} (its later failures are not reported); "
                      f"the Parquet logs are complete; training continues",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
