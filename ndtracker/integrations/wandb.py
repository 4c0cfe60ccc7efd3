"""Log each sample's figures to Weights & Biases as ``ndtracker/{space}/{metric}/{layer}``.

Example::

    import wandb
    from ndtracker.integrations.wandb import WandbSink

    run = wandb.init(project="exp")
    tracker = Tracker(model, every=10, sinks=[WandbSink(run)])

The figures are plotted against their own x-axis, ``ndtracker/step`` (the training step), declared
with ``define_metric``; they never pass ``step=`` to ``log``, so they cannot clash with the step
counter of the run's other writers (the Lightning and Hugging Face W&B integrations likewise plot
against their own global-step metric). Needs ``pip install 'torch-ndtracker[wandb]'``.
"""

from __future__ import annotations

from typing import Any

from ndtracker.integrations import missing_extra

try:
    import wandb
except ImportError as error:
    raise missing_extra("wandb", "wandb") from error

from ndtracker.tracking.sinks import TAG_PREFIX, scalars

__all__ = ["WandbSink", "STEP_METRIC"]

STEP_METRIC = f"{TAG_PREFIX}/step"
"""The W&B metric the sink's figures are plotted against: the training step."""


class WandbSink:
    """A Tracker sink logging to a W&B run, one ``log`` call per sample.

    Args:
        run: The run to log to. Default: the active run (``wandb.run``), or else a new run
            (``wandb.init()``, configured by the ``WANDB_*`` environment variables) that this sink
            finishes at :meth:`close`.
    """

    def __init__(self, run: Any | None = None) -> None:
        self._owned = False
        if run is None:
            run = wandb.run
            if run is None:
                run, self._owned = wandb.init(), True
        self.run = run
        run.define_metric(STEP_METRIC)
        run.define_metric(f"{TAG_PREFIX}/*", step_metric=STEP_METRIC)

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Log the finite metric values of ``rows``, with ``ndtracker/step`` = ``step``."""
        values = scalars(rows)
        if values:
            self.run.log({**values, STEP_METRIC: step})

    def close(self) -> None:
        """Finish the run if this sink started it."""
        if self._owned:
            self.run.finish()
