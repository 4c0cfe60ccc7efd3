"""The Tracker: the stateful shell that wires the parts below to a model and a training loop.

Options are checked in :mod:`~ndtracker.tracking.options`, layers chosen in
:mod:`~ndtracker.tracking.layers`, hooks and captures handled in :mod:`~ndtracker.tracking.capture`,
a sample measured into rows in :mod:`~ndtracker.tracking.sample` (the math in
:mod:`ndtracker.spectra`), the rows written by :mod:`ndtracker.store` and watched by the online
detectors of :mod:`~ndtracker.tracking.events`.
This module holds the step counter, the warn-once policy and the order of things.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ndtracker import store
from ndtracker.checks import boolean, non_negative_int, optional_positive_int, positive_int, positive_seconds
from ndtracker.tracking import geometry
from ndtracker.tracking.capture import Capturer
from ndtracker.tracking.layers import (
    DEFAULT_MAX_LAYERS, LayerSpec, recompile_with_hooks, select_layers, unwrapped, warn_unmeasured,
)
from ndtracker.tracking.sample import log_row, loss_value, measure_jobs, sample_jobs
from ndtracker.tracking.options import DEFAULT_MAX_BUFFER_ROWS, check_options
from ndtracker.tracking.sinks import Sink, SinkFanout
from ndtracker.tracking.events import SeriesDetectors, describe_event, detector_factory
from ndtracker.version import __version__
from ndtracker.vocabulary import SPACES

__all__ = ["Tracker"]

log = logging.getLogger("ndtracker")

Space = Literal["activation", "weight"]
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_DIRS = tuple(d + os.sep for d in (_PACKAGE_DIR, os.path.dirname(torch.__file__)))


class Tracker:
    """Measure the effective dimensionality of a model's layers every few optimizer steps.

    Three lines in an existing loop::

        tracker = Tracker(model, every=5, log_dir="runs/exp1")
        for x, y in loader:
            loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            tracker.step(loss=loss)
        tracker.close()

    Step ``t`` (counted from ``start_step`` by :meth:`step`) is *sampled* when ``t % every == 0``.
    On a sampled step the first *training forward* output of each layer is captured (the first
    micro-batch under gradient accumulation), and after the optimizer step, in :meth:`step`, the
    weights too. A training forward is one run with autograd recording (not under
    ``torch.no_grad()`` or ``torch.inference_mode()``) while the layer or the model is in training
    mode, so eval passes and ``no_grad`` inference never replace or add samples. With
    ``track_eval=True`` an eval or ``no_grad`` forward is captured when no training forward came
    before it, and a later training forward still replaces it. Recomputed forwards (``torch.utils.checkpoint``)
    come after the first and are ignored. Hooks are installed only around sampled steps (from the
    :meth:`step` call that ends the step before), so every other step runs PyTorch's no-hook fast
    path and costs the tracker an integer increment and a comparison. A model pickled, saved with
    ``torch.save(model)`` or deep-copied while hooks are installed keeps working: the copy carries
    inert hooks that never feed this tracker (loading such a pickle needs ndtracker importable);
    saving a ``state_dict()`` never involves hooks.

    Memory: the tracker keeps no reference to a layer's output. On a sampled step it holds, per
    layer, a float32 copy of at most ``max_rows`` rows of the output (so at most
    ``min(rows, max_rows) x features x 4`` bytes per layer, summed over the tracked layers), from
    the layer's forward until :meth:`step` measures and drops it. Measuring takes one matrix at a
    time and adds at most a float64 copy of it and its Gram matrix of the smaller side
    (``rows x features x 8 + min(rows, features)² x 16`` bytes). Logged rows wait in memory
    for the next flush; while the disk fails at most ``max_buffer_rows`` rows are kept (the oldest
    are dropped, counted and warned about).

    Logged columns (one row per sampled step, layer and space; read them with
    :func:`ndtracker.load`):

    =======================  =========  ===========================================================
    column                   type       meaning
    =======================  =========  ===========================================================
    ``run_id``               string     this run (a new one per Tracker, even in the same log_dir)
    ``step``                 int64      the training step
    ``layer``                string     module name as in ``model.named_modules()``
    ``space``                string     ``activation`` or ``weight``
    ``stable_rank``          float64    Σλ / λ₁
    ``participation_ratio``  float64    (Σλ)² / Σλ²
    ``effective_rank``       float64    exp(entropy of σ / Σσ); null unless in ``metrics``
    ``energy90``             int64      fewest directions holding 90% of Σλ; null unless in ``metrics``
    ``rows``, ``cols``       int64      shape of the measured matrix
    ``estimator``            string     ``exact`` or ``randomized``
    ``loss``                 float64    the loss passed to :meth:`step`, or null
    ``wall_time``            float64    seconds since the Unix epoch
    ``status``               string     ``ok``, or why the metrics are NaN: ``nonfinite`` (NaN
                                        or Inf in the matrix), ``zero`` (an all-zero matrix, as
                                        is a single row once centred), ``empty`` (no rows or no
                                        columns), ``failed`` (the decomposition raised)
    =======================  =========  ===========================================================
    ``condensation``         float64    weight rows with ``condensation=True``: fraction of neuron
                                        pairs whose input-weight vectors (bias included) have
                                        |cos| >= 0.9; else null
    ``directions``           float64    weight rows with ``condensation=True``: participation ratio
                                        of the neurons' cosine matrix (distinct directions)
    =======================  =========  ===========================================================

    Class geometry (``step(loss=..., labels=y)``): on sampled steps with labels, one row per layer
    in the ``classes`` table (``ndtracker.load(log_dir, table="classes")``): ``classes`` and
    ``skipped_classes`` (fewer than two rows), ``nc1``, ``radius``, ``dimension``,
    ``center_alignment``, ``axes_alignment``, ``ncc_accuracy`` (defined in
    :mod:`ndtracker.spectra.classes`), ``rows`` and ``status`` (``ok``, ``few_classes``,
    ``nonfinite``, ``zero``, ``mismatch``). Rows are examples: a sequence output is averaged over
    its tokens, a convolution output over its positions; above ``max_rows`` examples, the
    activations and the labels keep the same examples. Sequence and convolution outputs are
    pooled from the first sample after labels were first passed (the first labelled sample has
    the layers whose outputs are ``(batch, features)``), so an unlabelled run pays nothing.

    Args:
        model: The model to watch.
        every: Sample every this many steps (positive int). Default 5.
        log_dir: Run directory for the Parquet logs; created if missing. Default
            ``runs/ndtracker-<date>-<time>``.
        layers: Which modules to track: names, glob patterns (``"encoder.*.fc1"``), module types or
            module instances, alone or in a list. Default: every Linear, Conv, ConvTranspose,
            MultiheadAttention and RNN/LSTM/GRU module, and any other leaf module with a 2-D+
            ``weight`` except embeddings; at most ``max_layers`` of them: whole repeated blocks
            (``encoder.layer.3``), evenly spaced over depth, with a warning saying how many
            layers were left out.
        metrics: Metric names to compute (others are null). Default
            ``("stable_rank", "participation_ratio")``; add ``"effective_rank"`` and ``"energy90"``
            for the full spectrum (an eigendecomposition per matrix, so dearer).
        spaces: ``"activation"``, ``"weight"`` or both (default).
        estimator: ``"auto"`` (default: ``randomized`` where it is exact enough and cheaper, else
            ``exact``), ``"exact"`` or ``"randomized"``.
        conv: Convolution outputs as ``"channel"`` (default; rows are positions, columns channels)
            or ``"sample"`` (rows are samples, columns C·H·W).
        max_rows: Activation rows kept per sample (uniform subsample). Default 4096. Bounds the
            extra memory of a sample at ``max_rows x features x 4`` bytes per layer.
        center: Mean-centre activation columns (default True). Weights are never centred.
        max_layers: Cap on the default layer selection (default 64), a positive integer;
            ``None`` for no cap.
        weight_every: Measure weights every this many steps, a multiple of ``every``. Default:
            ``every``: every sampled step measures activation and weight spectra. The weight
            spectra are usually the dearer part of a sample (a weight's Gram matrix is formed
            from the whole matrix, where activations are capped at ``max_rows`` rows) and weights
            change slowly, so to make them cheaper pass a multiple, e.g. ``weight_every=10 *
            every``, or ``spaces="activation"`` to leave them out.
        track_eval: Also capture forwards run in eval mode or without autograd (a frozen
            backbone under ``torch.no_grad()``), when no training forward came first.
        output_key: For modules returning a dict, a dataclass or another object, the key or
            attribute holding the tensor to measure (default: the first tensor found).
        hooks: ``"auto"`` (default) is ``"permanent"`` for a ``torch.compile``d model and
            ``"sampled"`` otherwise. ``"sampled"`` installs hooks only around sampled steps;
            ``"permanent"`` keeps hooks installed, gated by one flag the compiled code guards on,
            because hooks added or removed after compilation are ignored or force recompilation
            and graph breaks, depending on the torch version (pass it when you compile the model
            or the training step after building the Tracker).
        detect: Run the online jump and phase detector on ``stable_rank`` (default True).
        start_step: The first step's number, to continue a resumed run's step axis. Default 0.
            With ``start_step > 0`` in a ``log_dir`` that already holds a run, ``run.json``
            links the new run to the latest one there (``"resumes"``), and ``load`` and
            ``report`` read the two as one run (the earlier run's rows from ``start_step`` on
            are left out: the resumed run measured them again).
        flush_secs: Write buffered rows to disk at least this often (default 5 s).
        max_buffer_rows: Rows kept in memory per table while writing fails (default 200 000,
            about 120 MB at some 600 bytes a row; a run logging 128 rows a sample keeps 1 500
            samples).
        seed: Seed of the row subsample.
        sinks: Where each sample's rows go besides the Parquet logs (which stay the source of
            truth): objects with ``write(step, rows)`` and ``close()`` (see
            :mod:`ndtracker.tracking.sinks`), e.g. ``TensorBoardSink``, ``WandbSink`` or
            ``MlflowSink`` from :mod:`ndtracker.integrations`. A sink that raises is warned about
            once and never stops training; ``close()`` closes the sinks.
        condensation: Also measure, on weight samples, how far each layer's neurons share
            input-weight directions (the ``condensation`` and ``directions`` columns; one
            ``out x out`` cosine matrix per layer, at most 4096 neurons). Default False.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, an option has the wrong type or a sink
            lacks ``write``/``close``.
        ValueError: If an option is out of range, a ``layers`` entry matches nothing, there is no
            trackable layer, or ``log_dir`` is a file or not writable.

    Example:
        >>> import torch, tempfile
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> with Tracker(model, every=2, log_dir=tempfile.mkdtemp(), detect=False) as tracker:
        ...     for _ in range(4):
        ...         loss = model(torch.randn(32, 8)).pow(2).mean()
        ...         tracker.step(loss=loss)
        >>> tracker.layers
        ['0', '2']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 5,
        log_dir: str | None = None,
        layers: LayerSpec | Sequence[LayerSpec] | None = None,
        metrics: Sequence[str] | None = None,
        spaces: str | Sequence[str] = SPACES,
        estimator: Literal["auto", "exact", "randomized"] = "auto",
        conv: Literal["channel", "sample"] = "channel",
        max_rows: int | None = 4096,
        center: bool = True,
        max_layers: int | None = DEFAULT_MAX_LAYERS,
        weight_every: int | None = None,
        track_eval: bool = False,
        output_key: str | None = None,
        hooks: Literal["auto", "sampled", "permanent"] = "auto",
        detect: bool = True,
        start_step: int = 0,
        flush_secs: float = 5.0,
        max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS,
        seed: int = 0,
        sinks: Sequence[Sink] | None = None,
        condensation: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._model = unwrapped(model)
        self._options = check_options(
            model, every=every, weight_every=weight_every, metrics=metrics, spaces=spaces,
            estimator=estimator, conv=conv, hooks=hooks, max_rows=max_rows, center=center,
            track_eval=track_eval, output_key=output_key, seed=seed, condensation=condensation,
        )  # fmt: skip
        self._step = non_negative_int("start_step", start_step)
        writing = {
            "start_step": self._step, "flush_secs": positive_seconds("flush_secs", flush_secs),
            "max_buffer_rows": positive_int("max_buffer_rows", max_buffer_rows),
        }  # fmt: skip
        max_layers = optional_positive_int("max_layers", max_layers)
        self._layers = select_layers(self._model, layers, max_layers, warn=_warn_at_user)
        self._sinks = SinkFanout(sinks)
        self._closed = False
        self._warned: set[tuple[str, str]] = set()
        self._detectors = SeriesDetectors(detector_factory(boolean("detect", detect)), self._warn_once)
        self._writer = _open_writer(log_dir, self._run_info(writing), writing)
        self._capturer = Capturer(self._model, self._layers, self._options, self._warn_once)
        recompile_with_hooks(model, _warn_at_user)
        if self._is_sampled(self._step):
            self._capturer.arm()

    # ---------------------------------------------------------------------------------- public

    @property
    def layers(self) -> list[str]:
        """Names of the tracked modules, in model order."""
        return [layer.name for layer in self._layers]

    @property
    def run_id(self) -> str:
        """This run's id in the log directory."""
        return self._writer.run_id

    @property
    def log_dir(self) -> str:
        """The run directory the logs go to."""
        return str(self._writer.run_dir)

    @property
    def current_step(self) -> int:
        """The number of the step in progress (the next :meth:`step` call ends it)."""
        return self._step

    def step(self, loss: float | torch.Tensor | None = None, labels: Any = None) -> None:
        """End the current training step; measure it if it was sampled.

        Call once per optimizer step, after ``optimizer.step()``. Never raises over a measurement:
        a failure is logged as NaN with a ``status`` and warned once per layer.

        Args:
            loss: The step's loss (float, 0-d tensor or None). A tensor is read only on sampled
                steps.
            labels: The class labels of the step's training batch (integer class indices, one
                per example: a 1-D tensor, array or list), or None. On sampled steps they give the
                ``classes`` table (see the class geometry in the class docstring); read only on
                sampled steps (labels on a GPU cost one more synchronisation there).
        """
        if labels is not None:
            self._capturer.examples = True  # from now on, sequence and conv outputs too
        if self._closed:
            self._warn_once("*", "closed", "step() after close() measures and logs nothing; build a new "
                            "Tracker (start_step= continues the step axis)")  # fmt: skip
        elif self._capturer.armed:
            self._finish_sample(loss, labels)
        self._step += 1
        if self._is_sampled(self._step) and not self._closed:
            self._capturer.arm()

    def flush(self) -> None:
        """Write the rows logged so far to disk now (they are also written every ``flush_secs``).

        Never raises: a failed write is warned about once and retried at the next flush.
        """
        self._writer.flush()

    def close(self) -> None:
        """Flush the logs and remove every hook. Idempotent; also called on ``with`` exit."""
        if self._closed:
            return
        self._closed = True
        self._capturer.disarm()
        self._capturer.remove()
        try:
            self._emit_events(self._detectors.finish())
        except Exception as error:  # the logs must be closed whatever the detector does
            self._warn_once("*", "events", f"the online detector failed at close: {error!r}")
        finally:
            self._writer.close()
            self._sinks.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker(every={self._options.every}, layers={len(self._layers)}, step={self._step}, "
            f"log_dir={self.log_dir!r}, closed={self._closed})"
        )

    # ---------------------------------------------------------------------------- internals

    @property
    def _hook_mode(self) -> str:
        """The resolved hook strategy, ``"sampled"`` or ``"permanent"``."""
        return self._options.hooks

    def _is_sampled(self, step: int) -> bool:
        return step % self._options.every == 0

    def _finish_sample(self, loss: float | torch.Tensor | None, labels: Any = None) -> None:
        """Measure the captures and weights of the sampled step, log the rows, disarm."""
        step, now = self._step, time.time()
        try:
            with_weights = self._options.weights_at(step)
            if with_weights:  # a replaced module or a complex weight: say why no weight row
                warn_unmeasured(self._layers, self._warn_once)
            extra = geometry.enqueue(
                self._layers, geometry.host_labels(labels, self._warn_once), self._capturer.example_indices,
                self._options.condensation and with_weights, step, self._warn_once,
            )  # fmt: skip  # enqueued first: the spectra's synchronisation waits for it too
            jobs, keys = sample_jobs(self._layers, self._options, with_weights, self._warn_once)
            results = measure_jobs(jobs, keys, self._warn_once)
            loss = loss_value(loss, self._warn_once)  # read after the measurement's transfer: no extra GPU stall
            classes, condensed = extra.finish(self._warn_once)
            rows = [
                log_row(step, (name, space), jobs[i], results[i], self._options.metrics, self._warn_once)
                | {"loss": loss, "wall_time": now} | _condensation_cells(condensed, name, space)
                for name, space, i in keys
            ]  # fmt: skip
            self._writer.append(rows)
            self._sinks.write(step, rows)
            if classes:
                self._writer.append_classes([row | {"step": step, "wall_time": now} for row in classes])
            self._emit_events(self._detectors.feed(rows))
        except Exception as error:  # a monitor never stops training
            self._warn_once("*", "*", f"sample of step {step} failed: {error!r}")
        finally:
            self._capturer.disarm()

    def _warn_once(self, layer: str, space: str, message: str) -> None:
        """Warn about a (layer, space) once per run; ``"*"`` stands for the whole tracker."""
        if (layer, space) in self._warned:
            return
        self._warned.add((layer, space))
        where = "ndtracker" if layer == "*" else f"ndtracker: layer {layer!r} ({space})"
        message = f"{where}: {message}; training continues"
        warnings.warn(message, RuntimeWarning, stacklevel=_user_stacklevel())

    def _emit_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        now = time.time()
        for event in events:
            event.setdefault("wall_time", now)
            log.info("%s", describe_event(event))
        try:
            self._writer.append_events(events)
        except Exception as error:
            self._warn_once("*", "events", f"could not log events: {error!r}")

    def _run_info(self, writing: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": type(self._model).__name__, "options": {**self._options.as_dict(), **writing},
            "layers": [layer.info() for layer in self._layers],
            "ndtracker_version": __version__, "torch_version": torch.__version__,
        }  # fmt: skip


def _condensation_cells(condensed: dict[str, tuple[float, float]], layer: str, space: str) -> dict[str, float]:
    if space != "weight" or layer not in condensed:
        return {}
    return dict(zip(("condensation", "directions"), condensed[layer]))


def _open_writer(log_dir: str | os.PathLike | None, run_info: dict[str, Any], writing: dict[str, Any]):
    if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"log_dir must be a path (a str or os.PathLike) or None, got {log_dir!r}")
    if log_dir is None:
        log_dir = time.strftime("runs/ndtracker-%Y%m%d-%H%M%S")
    path = store.validate_log_dir(log_dir)
    if writing["start_step"] > 0:
        run_info = {**run_info, **_resumed(path)}
    return store.RunWriter(
        path, run_info=run_info, flush_secs=writing["flush_secs"],
        max_buffer_rows=writing["max_buffer_rows"],
    )  # fmt: skip


def _resumed(path: os.PathLike) -> dict[str, str]:
    """``{"resumes": <latest run id>}`` when ``path`` already holds a run (a resumed run continues it)."""
    try:
        runs = store.read_run_info(path)
    except Exception:  # no run yet, or an unreadable run.json: nothing to link to
        return {}
    return {"resumes": str(runs[-1].get("run_id"))} if runs else {}


def _warn_at_user(message: str) -> None:
    """Warn (``UserWarning``) at the user's line that built the Tracker."""
    warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside ndtracker and torch."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level
