"""A Lightning callback that runs a Tracker over ``Trainer.fit``.

Example::

    from ndtracker.integrations.lightning import TrackerCallback

    trainer = lightning.Trainer(callbacks=[TrackerCallback(every=50, log_dir="runs/exp1")])
    trainer.fit(model, datamodule)

The callback builds the Tracker over the LightningModule when training starts and ends one step
per optimizer step, as ``trainer.global_step`` counts them (under ``accumulate_grad_batches=k`` a
step spans k batches; its first batch's forward is the one captured). The logged ``step`` is
``trainer.global_step`` during the step's forward (0 for the first), the step Lightning logs that
batch's own metrics at, so the two line up; a fit resumed from a checkpoint continues the axis
(the callback's state, saved in the checkpoint, also keeps its ``log_dir``). The ``loss`` column
is the loss ``training_step`` returned, averaged over the step's batches as Lightning does for the
backward. The Tracker is closed when fit ends, fails or is interrupted.

By default each sample's figures also go to the trainer's loggers (``trainer.loggers``, through
``log_metrics``) as ``ndtracker/{space}/{metric}/{layer}``; ``report=False`` turns that off. Pass
more sinks with ``sinks=[...]``. The Parquet logs in ``log_dir`` stay the source of truth.

Multi-device training (``strategy="ddp"``, ``"ddp_spawn"``...): a Tracker is built on every rank
(its hooks and any collective must run wherever the model runs) and, by default (``ranks=0``),
rank 0 alone writes the job's one run, whose ``run.json`` entry records the job under
``distributed``; pass an explicit ``log_dir`` so every rank agrees on it. The trainer's loggers
write on rank 0 only.
Needs ``pip install 'torch-ndtracker[lightning]'``.
"""

from __future__ import annotations

from typing import Any

import torch

from ndtracker.integrations import missing_extra

try:
    import lightning.pytorch as pl
except ImportError as error:
    raise missing_extra("lightning", "lightning") from error

from ndtracker.integrations._callbacks import check_tracker_options
from ndtracker.tracking import Tracker
from ndtracker.tracking.sinks import scalars

__all__ = ["TrackerCallback", "LoggerSink"]


class LoggerSink:
    """A Tracker sink that logs each sample's figures to Lightning loggers with ``log_metrics``.

    Args:
        loggers: The loggers, e.g. ``trainer.loggers``. They stay open: the trainer finalizes them.
    """

    def __init__(self, loggers: list[Any]) -> None:
        self._loggers = list(loggers)

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Log the finite metric values of ``rows`` at ``step`` to every logger."""
        values = scalars(rows)
        if not values:
            return
        for logger in self._loggers:
            logger.log_metrics(values, step=step)
            logger.save()

    def close(self) -> None:
        """Nothing to do: the trainer owns its loggers."""


class TrackerCallback(pl.Callback):
    """Run an ndtracker ``Tracker`` over ``Trainer.fit``; see the module docstring.

    Args:
        report: Also send each sample's figures to ``trainer.loggers`` (default True).
        **tracker_options: Options of :class:`~ndtracker.Tracker` (``every``, ``log_dir``,
            ``layers``, ``metrics``, ``sinks``...), but not ``model`` nor ``start_step``, which the
            callback takes from the trainer. Values are checked when fit starts.

    Raises:
        TypeError: If an option is not a Tracker option, or is ``model`` or ``start_step``.

    Attributes:
        tracker: The Tracker of the current or last fit, None before the first.
    """

    def __init__(self, *, report: bool = True, **tracker_options: Any) -> None:
        self._options = check_tracker_options("TrackerCallback", tracker_options)
        self._report = report
        self._restored: dict[str, Any] = {}
        self._losses: list[torch.Tensor] = []
        self.tracker: Tracker | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the Tracker at the trainer's global step (restored by then when resuming)."""
        self.close()
        options = dict(self._options)
        if options.get("log_dir") is None and self._restored.get("log_dir"):
            options["log_dir"] = self._restored["log_dir"]
        sinks = list(options.pop("sinks", None) or [])
        if self._report and trainer.loggers:
            sinks.append(LoggerSink(trainer.loggers))
        self.tracker = Tracker(pl_module, start_step=trainer.global_step, sinks=sinks, **options)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Keep the batch's loss; end the step once the optimizer stepped."""
        if self.tracker is None:
            return
        self._keep_loss(outputs)
        if self.tracker.current_step >= trainer.global_step:  # accumulating: no optimizer step yet
            return
        loss, self._losses = _step_loss(self._losses), []
        while self.tracker.current_step < trainer.global_step:  # several optimizers: one step each
            self.tracker.step(loss=loss)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.close()  # also on KeyboardInterrupt: Lightning calls this hook for it

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.close()

    def state_dict(self) -> dict[str, Any]:
        """The step axis and run directory, saved in checkpoints."""
        if self.tracker is None:
            return dict(self._restored)
        return {"step": self.tracker.current_step, "log_dir": self.tracker.log_dir}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume into the checkpoint's run directory (unless ``log_dir`` was passed)."""
        self._restored = dict(state_dict)

    def close(self) -> None:
        """Close the Tracker (flush the logs, remove its hooks); idempotent."""
        self._losses = []
        if self.tracker is not None:
            self.tracker.close()

    def _keep_loss(self, outputs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())


def _step_loss(losses: list[torch.Tensor]) -> torch.Tensor | None:
    """The step's loss: the sum of its batches' losses, each divided by the batch count.

    One batch passes through untouched; several are summed on their device, without a host
    transfer (the Tracker reads the value on sampled steps only).
    """
    if not losses:
        return None
    return losses[0] if len(losses) == 1 else torch.stack(losses).sum()
