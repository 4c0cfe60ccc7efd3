"""Log each sample's figures to MLflow as metrics ``ndtracker/{space}/{metric}/{layer}``.

Example::

    import mlflow
    from ndtracker.integrations.mlflow import MlflowSink

    with mlflow.start_run():
        tracker = Tracker(model, every=10, sinks=[MlflowSink()])
        ...

Needs ``pip install 'torch-ndtracker[mlflow]'`` (``mlflow-skinny``; the full ``mlflow`` works too).
"""

from __future__ import annotations

import time
from typing import Any

from ndtracker.integrations import missing_extra

try:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
except ImportError as error:
    raise missing_extra("mlflow", "mlflow") from error

from ndtracker.tracking.sinks import scalars

__all__ = ["MlflowSink"]

MAX_BATCH = 1000
"""The most metrics MLflow accepts in one ``log_batch`` call."""


class MlflowSink:
    """A Tracker sink logging metrics to one MLflow run, one batch per sample.

    The run is fixed at construction, so rows keep going to it even after the active run changed
    (the Hugging Face MLflow integration ends its run before the callbacks after it see the end).

    Args:
        run_id: The run to log to. Default: the active run (``mlflow.active_run()``), or else a
            new run this sink starts and ends at :meth:`close`.
    """

    def __init__(self, run_id: str | None = None) -> None:
        self._client = MlflowClient()
        self._owned = False
        if run_id is None:
            run = mlflow.active_run()
            if run is None:
                run, self._owned = mlflow.start_run(), True
            run_id = run.info.run_id
        self.run_id = run_id

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Log the finite metric values of ``rows`` at ``step`` in one batch."""
        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value in scalars(rows).items()]
        for start in range(0, len(metrics), MAX_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + MAX_BATCH])

    def close(self) -> None:
        """End the run if this sink started it."""
        if not self._owned:
            return
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run()
        else:
            self._client.set_terminated(self.run_id)
