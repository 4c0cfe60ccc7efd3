"""Write each sample's figures to TensorBoard as scalars ``ndtracker/{space}/{metric}/{layer}``.

Example::

    from ndtracker.integrations.tensorboard import TensorBoardSink

    tracker = Tracker(model, every=10, log_dir="runs/exp1/ndtracker",
                      sinks=[TensorBoardSink("runs/exp1/tensorboard")])

Then ``tensorboard --logdir runs/exp1``. Needs ``pip install 'torch-ndtracker[tensorboard]'``.
"""

from __future__ import annotations

import os
from typing import Any

from ndtracker.integrations import missing_extra

try:
    import tensorboard  # noqa: F401  (torch's SummaryWriter needs it; fail here, naming the extra)
    from torch.utils.tensorboard import SummaryWriter
except ImportError as error:
    raise missing_extra("tensorboard", "tensorboard") from error

from ndtracker.tracking.sinks import scalars

__all__ = ["TensorBoardSink"]


class TensorBoardSink:
    """A Tracker sink writing scalars to a TensorBoard event file.

    Args:
        dir_or_writer: A directory for a new ``SummaryWriter`` (created if missing; closed by
            :meth:`close`), or an open writer with ``add_scalar`` (e.g. Lightning's
            ``TensorBoardLogger.experiment``), flushed but left open by :meth:`close`.

    Raises:
        TypeError: If ``dir_or_writer`` is neither a path nor an object with ``add_scalar``.
    """

    def __init__(self, dir_or_writer: str | os.PathLike[str] | Any) -> None:
        if isinstance(dir_or_writer, (str, os.PathLike)):
            self._writer, self._owned = SummaryWriter(log_dir=os.fspath(dir_or_writer)), True
        elif callable(getattr(dir_or_writer, "add_scalar", None)):
            self._writer, self._owned = dir_or_writer, False
        else:
            raise TypeError(f"dir_or_writer must be a directory or a SummaryWriter, got {dir_or_writer!r}")

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Add one scalar per finite metric value of ``rows`` at ``step``."""
        for tag, value in scalars(rows).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        """Flush the event file; close the writer if this sink opened it."""
        if self._owned:
            self._writer.close()
        else:
            self._writer.flush()
