"""A Tracker inside a torch.distributed job: options, rank policy and the writer of each rank.

Every rank builds the same Tracker (after wrapping the model) and calls ``step()``. By default one
rank (0) registers and writes the run and the others write nothing (``ranks=0``: one run per job);
with ``ranks="all"`` every rank writes its own parts of the same run, numbered apart so no two
ranks ever write one file. How a sample is measured over the job is in
:mod:`~ndtracker.tracking.global_sample`; the job's parallel layout in
:mod:`~ndtracker.tracking.parallel_layout`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ndtracker import store
from ndtracker.spectra import Job, Result
from ndtracker.tracking.global_sample import GlobalSample
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.tracking.parallel_layout import Layout, detect_layout, is_dtensor

__all__ = [
    "Parallel", "NullWriter", "ACTIVATION_MODES", "check_ranks", "check_activations", "setup",
    "local_tensor",
]  # fmt: skip

Warn = Callable[[str, str, str], None]
ACTIVATION_MODES: tuple[str, ...] = ("global", "local")


# ------------------------------------------------------------------------------ options


def check_ranks(ranks: Any, world_size: int | None) -> int | str:
    """``ranks``: ``"all"`` or the rank (int) that writes the run."""
    if ranks == "all":
        return "all"
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 0:
        raise ValueError(f"ranks must be 'all' or the rank that writes the run (an int), got {ranks!r}")
    if world_size is not None and ranks >= world_size:
        raise ValueError(f"ranks={ranks} is not a rank of this job (world size {world_size})")
    return ranks


def check_activations(activations: Any) -> str:
    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
    return activations


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a layer output: a DTensor's local shard, a pending collective's result.

    Tensor-parallel layers return ``AsyncCollectiveTensor`` (waited for here) or, with
    ``use_local_output=False``, a DTensor (its shard: features split across ranks are measured
    whole by :class:`Parallel`).
    """
    if is_dtensor(tensor):
        tensor = tensor.to_local()
    wait = getattr(tensor, "wait", None) if type(tensor) is not torch.Tensor else None
    return wait() if callable(wait) else tensor


def setup(model: nn.Module, ranks: Any, activations: Any) -> Parallel | None:
    """Check the distributed options; the job's :class:`Parallel` when torch.distributed is up."""
    activations = check_activations(activations)
    if not (dist.is_available() and dist.is_initialized()):
        check_ranks(ranks, None)
        return None
    return Parallel(detect_layout(model), check_ranks(ranks, dist.get_world_size()), activations)


# ------------------------------------------------------------------------------ the rank policy


class NullWriter:
    """The writer of a rank that does not write (``ranks=<int>``, another rank): keeps nothing."""

    def __init__(self, run_id: str, run_dir: str) -> None:
        self.run_id, self.run_dir = run_id, Path(run_dir)

    def append(self, rows: Any) -> None:
        pass

    def append_events(self, rows: Any) -> None:
        pass

    def append_similarity(self, rows: Any) -> None:
        pass

    def append_classes(self, rows: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Parallel:
    """The distributed side of one Tracker: who writes, and how a sample is measured globally."""

    layout: Layout
    ranks: int | str
    activations: str
    device: torch.device = field(init=False)
    sent: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        cuda = self.layout.backend == "nccl" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    @property
    def registrant(self) -> int:
        """The rank that registers the run in ``run.json`` (and writes it, unless ``ranks="all"``)."""
        return 0 if self.ranks == "all" else int(self.ranks)

    def info(self) -> dict[str, Any]:
        """The job and options, for ``run.json``."""
        return {**self.layout.info(), "ranks": self.ranks, "activations": self.activations}

    def raise_together(self, error: BaseException | None, what: str) -> None:
        """Raise on every rank when a check failed on any: ``error`` here, or the first failed rank's.

        A check that raised on one rank only would leave the others waiting in the next
        collective; one ``all_gather_object`` (at construction) lets them all raise instead.

        Raises:
            Exception: ``error`` on the rank where it happened; ValueError naming the rank and
                its message on the others.
        """
        found: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(found, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, text) for rank, text in enumerate(found) if text is not None]
        if failed:
            rank, text = failed[0]
            raise ValueError(f"{what}: the check failed on rank {rank} ({text}); every rank raises")

    def capture_options(self, options: Options) -> Options:
        """Global activations are captured uncentred: they are centred with the global mean."""
        return options if self.activations == "local" else dataclasses.replace(options, center=False)

    def open_writer(
        self, log_dir: str, run_info: dict[str, Any], writing: dict[str, Any],
        amend: Callable[[Path], dict[str, Any]] | None = None,
    ) -> Any:  # fmt: skip
        """Register the run on one rank, share its id, and open this rank's writer (or none).

        ``amend(path)`` adds facts read from the run directory to ``run_info`` on the registering
        rank (a resumed run's link to the run it continues); the other ranks never touch it.

        Raises:
            ValueError: On every rank, when the registering rank could not open ``log_dir``.
        """
        shared: list[Any] = [None, None, None]
        error: Exception | None = None
        writer: Any = None
        if self.layout.rank == self.registrant:
            try:
                writer = _writer(log_dir, run_info, writing, self.layout.rank, amend=amend)
                shared = [writer.run_id, str(writer.run_dir), None]
            except Exception as caught:
                error, shared = caught, [None, None, str(caught)]
        dist.broadcast_object_list(shared, src=self.registrant)
        if error is not None:
            raise error
        if shared[2] is not None:
            raise ValueError(f"rank {self.registrant} could not open the run: {shared[2]}")
        if writer is not None:
            return writer
        if self.ranks == "all":
            return _writer(shared[1], {}, writing, self.layout.rank, run_id=shared[0])
        return NullWriter(shared[0], shared[1])

    def measure(
        self, layers: list[TrackedLayer], options: Options, step: int, with_weights: bool, warn: Warn
    ) -> tuple[list[Job], list[tuple[str, str, int]], list[Result | None]]:
        """Measure a sample over the job: the jobs, keys and results :func:`log_row` expects.

        The bytes each collective's buffer held on this rank are kept in :attr:`sent`.
        """
        sample = GlobalSample(self.layout, self.device, options, step, self.activations == "local", warn)
        try:
            return sample.run(layers, with_weights)
        finally:
            self.sent = sample.sent


def _writer(
    log_dir: str, run_info: dict[str, Any], writing: dict[str, Any], rank: int, run_id=None, amend=None
):
    path = store.validate_log_dir(log_dir)
    if amend is not None:
        run_info = {**run_info, **amend(path)}
    return store.RunWriter(
        path, run_info=run_info, flush_secs=writing["flush_secs"],
        max_buffer_rows=writing["max_buffer_rows"], rank=rank, run_id=run_id,
    )  # fmt: skip


