"""A Hugging Face ``Trainer`` callback that runs a Tracker over ``Trainer.train``.

Example::

    from ndtracker.integrations.huggingface import TrackerCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[TrackerCallback(every=50, log_dir="runs/exp1")])
    trainer.train()

The callback builds the Tracker over the model when training begins and ends one step per
optimizer step (``on_step_end``; under ``gradient_accumulation_steps=k`` a step spans k
micro-batches, the first one's forward is the one captured). The logged ``step`` is
``state.global_step`` during the step's forward: 0 for the first step, which the Trainer's own logs
report once it is done, as step 1. Resuming (``train(resume_from_checkpoint=...)``) continues the
axis from the restored ``state.global_step``. The ``loss`` column is the loss the Trainer logs for
that step (``logs["loss"]`` of a log covering that one step, so every step's with
``logging_steps=1``), else null.

By default each sample's figures also go to the Trainer's reporting integrations among
TensorBoard, W&B and MLflow (``args.report_to``), on the main process only, as
``ndtracker/{space}/{metric}/{layer}`` at the ndtracker step: W&B and MLflow into the run their
integration started (``wandb.run``, ``mlflow.active_run()``), TensorBoard into
``{output_dir}/runs/ndtracker`` (or ``$TENSORBOARD_LOGGING_DIR``, where the Trainer's own events go,
when set), a run beside the Trainer's under ``tensorboard --logdir {output_dir}/runs``.
``report=False`` turns that off; pass more sinks with ``sinks=[...]``. The Parquet logs in
``log_dir`` stay the source of truth.

Closing: the Tracker is closed when training ends. The Trainer has no callback for a failed or
interrupted ``train()``; then the Tracker is closed when the next ``train()`` begins, when
:meth:`TrackerCallback.close` is called, or at interpreter exit, whichever comes first (its rows
up to the last flush, every ``flush_secs``, are on disk in any case).

Multi-device training: a Tracker is built on every process (its hooks and any collective must run
wherever the model runs) and only the main process is meant to write; until the distributed
Tracker lands, every process writes its own run (its own ``run_id``) into ``log_dir``, so pass the
same explicit ``log_dir`` to every process. Needs ``pip install 'torch-ndtracker[huggingface]'``.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from ndtracker.integrations import missing_extra

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:
    raise missing_extra("transformers", "huggingface") from error

from ndtracker.integrations._callbacks import check_tracker_options
from ndtracker.tracking import Tracker

__all__ = ["TrackerCallback"]


class TrackerCallback(TrainerCallback):
    """Run an ndtracker ``Tracker`` over ``Trainer.train``; see the module docstring.

    Args:
        report: Also send each sample's figures to the Trainer's TensorBoard, W&B and MLflow
            integrations named in ``args.report_to`` (default True).
        **tracker_options: Options of :class:`~ndtracker.Tracker` (``every``, ``log_dir``,
            ``layers``, ``metrics``, ``sinks``...), but not ``model`` nor ``start_step``, which the
            callback takes from the Trainer. Values are checked when training begins.

    Raises:
        TypeError: If an option is not a Tracker option, or is ``model`` or ``start_step``.

    Attributes:
        tracker: The Tracker of the current or last ``train()``, None before the first.
    """

    def __init__(self, *, report: bool = True, **tracker_options: Any) -> None:
        self._options = check_tracker_options("TrackerCallback", tracker_options)
        self._report = report
        self._pending = False  # the optimizer stepped; the Tracker's step waits for its loss
        self._loss_logged_at = 0  # global step of the Trainer's last loss log
        self.tracker: Tracker | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:  # fmt: skip
        """Build the Tracker at the (restored) global step."""
        self.close()
        options = dict(self._options)
        sinks = list(options.pop("sinks", None) or [])
        if self._report and state.is_world_process_zero:
            sinks += _reporting_sinks(args)
        self.tracker = Tracker(model, start_step=state.global_step, sinks=sinks, **options)
        self._loss_logged_at = state.global_step
        atexit.register(self.close)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:  # fmt: skip
        self._end_step(loss=None)  # no log came for the last step: end it before this one's forward

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:  # fmt: skip
        self._end_step(loss=None)
        self._pending = self.tracker is not None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        """Take the loss of a log covering exactly the step that just ended."""
        if not logs or "loss" not in logs:
            return
        one_step = state.global_step - self._loss_logged_at == 1
        self._loss_logged_at = state.global_step
        if self._pending:
            self._end_step(loss=logs["loss"] if one_step else None)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:  # fmt: skip
        self.close()

    def close(self) -> None:
        """End a pending step and close the Tracker (flush the logs, remove its hooks); idempotent."""
        atexit.unregister(self.close)
        self._end_step(loss=None)
        if self.tracker is not None:
            self.tracker.close()

    def _end_step(self, loss: float | None) -> None:
        if self._pending and self.tracker is not None:
            self._pending = False
            self.tracker.step(loss=loss)


def _reporting_sinks(args: TrainingArguments) -> list[Any]:
    """Sinks into the runs of the Trainer's TensorBoard, W&B and MLflow integrations."""
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    sinks: list[Any] = []
    if "tensorboard" in report_to:
        from ndtracker.integrations.tensorboard import TensorBoardSink

        directory = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs", "ndtracker")
        sinks.append(TensorBoardSink(os.path.expanduser(directory)))
    if "wandb" in report_to:
        from ndtracker.integrations.wandb import WandbSink, wandb

        if wandb.run is not None:  # started by the Trainer's W&B integration
            sinks.append(WandbSink(wandb.run))
    if "mlflow" in report_to:
        from ndtracker.integrations.mlflow import MlflowSink, mlflow

        if mlflow.active_run() is not None:  # started by the Trainer's MLflow integration
            sinks.append(MlflowSink(mlflow.active_run().info.run_id))
    return sinks
