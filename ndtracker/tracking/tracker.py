"""The Tracker: the stateful shell that wires the parts below to a model and a training loop.

Options are checked in :mod:`~ndtracker.tracking.options`, layers chosen in
:mod:`~ndtracker.tracking.layers`, hooks and captures handled in :mod:`~ndtracker.tracking.capture`,
a sampled step's turn (measure, read back, log) run by :mod:`~ndtracker.tracking.turn`, a sample
measured into rows in :mod:`~ndtracker.tracking.sample` (the math in :mod:`ndtracker.spectra`),
the run opened in :mod:`~ndtracker.tracking.opening`, the rows written by :mod:`ndtracker.store`
and watched by the online detectors of :mod:`~ndtracker.tracking.events`. This module holds the public API, the construction, the step
counter and the warn-once policy.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ndtracker.checks import boolean, non_negative_int, optional_positive_int, positive_int, positive_seconds
from ndtracker.tracking import distributed
from ndtracker.tracking.capture import Capturer
from ndtracker.tracking.cost import Overhead, OverheadMeter
from ndtracker.tracking.events import EventEmitter, OnlineEvent, SeriesDetectors, check_on_event, detector_factory
from ndtracker.tracking.layers import DEFAULT_MAX_LAYERS, LayerSpec, recompile_with_hooks, select_layers, unwrapped
from ndtracker.tracking.options import DEFAULT_MAX_BUFFER_ROWS, check_options, check_unknown
from ndtracker.tracking.opening import open_writer, run_info
from ndtracker.tracking.probe import ProbeSpec
from ndtracker.tracking.sampler import checked_probe
from ndtracker.tracking.sinks import Sink, SinkFanout
from ndtracker.tracking.schedule import EverySpec
from ndtracker.tracking.turn import Turns
from ndtracker.vocabulary import SPACES

__all__ = ["Tracker"]

Space = Literal["activation", "weight"]
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_DIRS = tuple(d + os.sep for d in (_PACKAGE_DIR, os.path.dirname(torch.__file__)))
_FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")  # their frames are not the user's


class Tracker:
    """Measure the effective dimensionality of a model's layers every few optimizer steps.

    Three lines in an existing loop::

        tracker = Tracker(model, every=5, log_dir="runs/exp1")
        for x, y in loader:
            loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            tracker.step(loss=loss)
        tracker.close()

    Step ``t`` (counted from ``start_step`` by :meth:`step`) is *sampled* when ``t % every == 0``,
    or, with a schedule such as ``every=[(0, 1), (100, 5)]``, when it is a multiple of the interval
    in force at ``t`` (every step up to 99, then 100, 105, ...). All rows of a sampled step describe
    one parameter state, the one its forward used: the weights *before* optimizer update ``t``.
    They are measured when step ``t`` begins, at the end of the :meth:`step` call that ends step
    ``t - 1`` (at construction for the first step, so step 0 holds the initial weights); a change
    made to the weights between :meth:`step` and the next forward (a checkpoint loaded after the
    Tracker was built, weights edited by hand) shows from the next sampled step on. Without a
    ``probe``, the first *training forward* output of each layer in step ``t`` is captured (the
    first micro-batch under gradient accumulation) and measured when :meth:`step` ends it. With a
    ``probe``, the probe batch runs through the model when step ``t`` begins, in eval mode and
    without autograd, and its activations are measured with the weights; training forwards are
    then never hooked. A training forward is one run with autograd recording (not under
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

    Cost: a sample measures its weights (and its probe) in one batch with one host transfer when
    it begins, and its training activations in another when it ends; the two share one batch and
    one transfer when both fall in the same :meth:`step` call (``every=1``), and with a probe the
    end has nothing left to measure. A probe adds one forward of the probe batch per sample.
    The class geometry, linear probes, condensation and gradient norms of a sample are enqueued
    on the device before its spectra and read back together after them (one more transfer per
    device, after the spectra's synchronisation).

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
    ``space``                string     ``activation`` or ``weight``; both describe the weights
                                        the step's forward used (before its optimizer update)
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
    ``grad_norm``            float64    weight rows, with ``gradients=True``: Frobenius norm of the
                                        weight's gradient as the optimizer saw it; else null
    ``probe_accuracy``       float64    activation rows, with ``linear_probes=True`` and labels
                                        (the probe batch's, or else ``step(labels=...)``):
                                        linear-probe accuracy on the rows' own examples
                                        (:mod:`ndtracker.spectra.probes`); else null
    ``source``               string     activation rows: ``train`` (the step's first training
                                        forward) or ``probe`` (the probe batch); null for weights
    ``condensation``         float64    weight rows with ``condensation=True``: fraction of neuron
                                        pairs whose input-weight vectors (bias included) have
                                        |cos| >= 0.9; else null
    ``directions``           float64    weight rows with ``condensation=True``: participation ratio
                                        of the neurons' cosine matrix (distinct directions)
    =======================  =========  ===========================================================

    Class geometry (a labelled ``probe=(x, y)``, or without a probe ``step(loss=..., labels=y)``):
    on sampled steps with labels, one row per layer in the ``classes`` table
    (``ndtracker.load(log_dir, table="classes")``): ``classes`` and ``skipped_classes`` (fewer
    than two rows), ``nc1``, ``radius``, ``dimension``, ``center_alignment``, ``axes_alignment``,
    ``ncc_accuracy`` (defined in :mod:`ndtracker.spectra.classes`), ``rows``, ``status`` (``ok``,
    ``few_classes``, ``nonfinite``, ``zero``, ``mismatch``) and ``source`` (``probe``: the probe
    batch, measured when the step begins, on the weights its forward used; ``train``: the step's
    training forward). Rows are examples: a sequence output is averaged over
    its tokens, a convolution output over its positions; above ``max_rows`` examples, the
    activations and the labels keep the same examples. Sequence and convolution outputs are
    pooled from the first sample after labels were first passed (the first labelled sample has
    the layers whose outputs are ``(batch, features)``), so an unlabelled run pays nothing.

    With ``similarity=True`` a third table, read by ``ndtracker.load(DIR, table="similarity")``,
    holds the linear CKA of every pair of tracked layers per sample (``step``, ``layer_a``,
    ``layer_b`` (``a`` before or equal to ``b`` in model order), ``space``, ``cka``, ``rows``,
    ``status``; see :mod:`ndtracker.spectra.similarity`).

    Args:
        model: The model to watch.
        every: Sample every this many steps (positive int; default 5), or a schedule: a list of
            ``(start, every)`` pairs with increasing starts, the first at 0, e.g. ``[(0, 1), (100,
            5)]``: from each ``start`` on, the multiples of its ``every`` are sampled (dense early
            curves, then cheaper). Recorded in ``run.json``.
        log_dir: Run directory for the Parquet logs; created if missing. Default
            ``runs/ndtracker-<date>-<time>``.
        layers: Which modules to track: names, glob patterns (``"encoder.*.fc1"``), module types or
            module instances, alone or in a list. Default: every Linear, Conv, ConvTranspose,
            MultiheadAttention and RNN/LSTM/GRU module, and any other leaf module with a 2-D+
            ``weight`` except embeddings; at most ``max_layers`` of them: whole repeated blocks
            (``encoder.layer.3``), evenly spaced over depth, with a warning saying how many
            layers were left out.
        metrics: Metric names to compute (others are null). Default ``("stable_rank",)``, which
            needs no Gram matrix; add ``"participation_ratio"`` (a Gram product per matrix) and
            ``"effective_rank"``, ``"energy90"`` for the full spectrum (an eigendecomposition per
            matrix, so dearer).
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
        weight_every: Measure weights every this many steps, a multiple of ``every`` (of each
            interval of a schedule). Default: every sampled step measures activation and weight
            spectra. The weight spectra are usually the dearer part of a sample (a weight's Gram
            matrix is formed from the whole matrix, where activations are capped at ``max_rows``
            rows) and weights change slowly, so to make them cheaper pass a multiple, e.g.
            ``weight_every=10 * every``, or ``spaces="activation"`` to leave them out.
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
        detect: Run the online jump and phase detector on ``stable_rank`` (default True). Its
            events are logged through the ``ndtracker`` logger as they are found (a collapse
            phase at WARNING, the others at INFO) and written to ``events/`` with the next flush.
        gradients: Log each tracked weight's gradient norm as ``grad_norm`` on measured steps
            (default False): a post-accumulate-grad hook per weight, installed only around those
            steps, so a ``zero_grad()`` before :meth:`step` is fine.
        similarity: Log the linear CKA of every pair of tracked layers on the first 512 examples
            of each sampled forward (default False; convolutions pooled per example).
        linear_probes: Log each layer's linear-probe accuracy as ``probe_accuracy`` (default
            False): a closed-form ridge classifier fitted on a fixed half of the examples and
            scored on the other half, on the probe batch with its labels (``probe=(x, y)``), or
            without a probe on the training forward's examples (the first 512 until labels are
            first passed) against ``step(labels=...)``. (Formerly ``probes=``; not to be confused
            with ``probe``, the probe batch.)
        probe: A fixed batch measured instead of the training batch: a tensor ``x``
            (``model(x)``), a dict of keyword inputs (``model(**probe)``), an ``(inputs, labels)``
            pair as a data loader yields it (a tuple or two-item list; ``inputs`` a tensor, a
            dict or a tuple of positional inputs; ``labels`` one integer class index per
            example), or :class:`ndtracker.Probe` ``(args=..., kwargs=..., labels=...)``, the
            general form; several positional inputs are ``Probe(args=(x1, x2))`` (a tuple is
            always ``(inputs, labels)``). With labels, the class geometry and, with
            ``linear_probes=True``, the linear probes are measured on the probe batch too
            (``step(labels=...)`` is then not used). It runs once per sample, when the step begins,
            under ``torch.no_grad()`` with every module in eval mode (each module's training flag
            restored exactly), moved to the model's device and floating-point dtype; and once at
            construction, to check the model takes it. Prefer it for low-noise curves: with the
            training batch, an activation curve's wiggles (and the jumps and phases found in them)
            are partly batch noise. Costs one forward of the probe batch per sample. With
            ``similarity=True`` the probe's examples are compared.
        on_event: Called with each online jump and phase change as an
            :class:`~ndtracker.tracking.OnlineEvent`, from :meth:`step` on the training thread,
            as soon as the detector reports it (and from :meth:`close` for those it held back).
            An exception it raises is warned about once and never stops training.
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
        ranks: In a torch.distributed job (initialised before the Tracker is built, on every
            rank, after wrapping the model with DDP, ``fully_shard`` or ``parallelize_module``):
            the rank that writes the run (default 0: one run per job), or ``"all"``: every rank
            writes its own parts of the same run (its ``rank`` column tells them apart). Ignored
            without torch.distributed.
        activations: In a torch.distributed job, ``"global"`` (default): a layer's activation
            metrics are those of all ranks' captured rows together, centred with the global mean,
            as if one process had seen the whole batch (``max_rows`` caps the global rows; a
            tensor-parallel layer is measured on all its features); ``"local"``: each rank
            measures its own rows. Weights are always measured whole (sharded ones included).
        condensation: Also measure, on weight samples, how far each layer's neurons share
            input-weight directions (the ``condensation`` and ``directions`` columns; one
            ``out x out`` cosine matrix per layer, at most 4096 neurons). Default False.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``on_event`` is not callable, an option
            has the wrong type or is unknown (``probes=``, renamed ``linear_probes=``, names its
            new name) or a sink lacks ``write``/``close``.
        ValueError: If an option is out of range, ``every`` is not a valid schedule, a ``layers``
            entry matches nothing, there is no trackable layer, ``probe`` is not one of its forms
            or its labels are not one class index per example, the model cannot take ``probe``,
            it reaches no tracked layer or gives one a single row, ``linear_probes=True`` comes
            with an unlabelled probe, or ``log_dir`` is a file or not writable. In a
            torch.distributed job a probe that fails its check on one rank raises on every rank.

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
        every: EverySpec = 5,
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
        gradients: bool = False,
        similarity: bool = False,
        linear_probes: bool = False,
        probe: ProbeSpec | None = None,
        on_event: Callable[[OnlineEvent], Any] | None = None,
        start_step: int = 0,
        flush_secs: float = 5.0,
        max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS,
        seed: int = 0,
        sinks: Sequence[Sink] | None = None,
        ranks: int | Literal["all"] = 0,
        activations: Literal["global", "local"] = "global",
        condensation: bool = False,
        **unknown: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_unknown(unknown)
        self._model = unwrapped(model)
        self._options = check_options(
            model, every=every, weight_every=weight_every, metrics=metrics, spaces=spaces,
            estimator=estimator, conv=conv, hooks=hooks, max_rows=max_rows, center=center,
            track_eval=track_eval, output_key=output_key, seed=seed, gradients=gradients,
            similarity=similarity, linear_probes=linear_probes, condensation=condensation,
        )  # fmt: skip
        self._parallel = distributed.setup(model, ranks, activations)
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
        on_event = check_on_event(on_event)
        detectors = SeriesDetectors(detector_factory(boolean("detect", detect)), self._warn_once)
        capturing = self._options if self._parallel is None else self._parallel.capture_options(self._options)
        self._capturer = Capturer(self._model, self._layers, capturing, self._warn_once)
        try:
            runner = checked_probe(self._model, probe, self._capturer, self._layers, self._options, self._parallel)
            info = run_info(self._model, self._options, writing, self._layers, runner, self._parallel)
            self._writer = open_writer(log_dir, info, writing, self._parallel)
        except BaseException:  # permanent hooks are installed already
            self._capturer.remove()
            raise
        recompile_with_hooks(model, _warn_at_user)
        self._events = EventEmitter(self._writer, on_event, self._warn_once)
        outputs = (self._writer, self._sinks, detectors, self._events)
        self._turns = Turns(self._layers, self._options, self._capturer, runner, self._parallel, outputs, self._warn_once)
        self._detectors = detectors
        self._meter = OverheadMeter()
        self._next_sample = self._options.every.next_sampled(self._step)
        if self._step == self._next_sample:
            self._turns.turn(None, self._step)  # the first step's weights (and probe): the initial ones

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
    def overhead(self) -> Overhead | None:
        """What sampling has cost the loop over its last few hundred steps, from the loop's clock.

        The wall time of the steps the tracker touched against the median of the others (a bare
        loop's, in effect): ``share`` (0.25: 25 % slower than untracked), ``per_sample_ms`` and
        ``step_ms``. None until the window holds 8 samples and 8 untouched steps (never at
        ``every`` of 1 or 2). Past 30 % and 20 ms per sample, a warning (once) names the options that
        make it cheaper.
        """
        return self._meter.overhead()

    @property
    def current_step(self) -> int:
        """The number of the step in progress (the next :meth:`step` call ends it)."""
        return self._step

    def step(self, loss: float | torch.Tensor | None = None, *, labels: Any = None) -> None:
        """End the current training step; log it if it was sampled; begin the next one.

        Call once per optimizer step, after ``optimizer.step()``. If the next step is sampled, its
        weights (and probe) are measured now: they are the weights its forward will use. Online
        events settled by this sample are logged and handed to ``on_event`` before it returns.
        Never raises over a measurement: a failure is logged as NaN with a ``status`` and warned
        once per layer.

        Args:
            loss: The step's loss (float, 0-d tensor or None). A tensor is read only on sampled
                steps.
            labels: The class labels of the step's training batch (integer class indices, one
                per example: a 1-D tensor, array or list; the first micro-batch's, whose forward
                was captured), or None. Read only on sampled steps (labels on a GPU cost one more
                synchronisation there). They give the ``classes`` table (see the class geometry in
                the class docstring) and, with ``linear_probes=True``, the linear probes. Not used
                with a ``probe`` (its own labels are: a warning says so once).
        """
        if self._closed:
            self._warn_once("*", "closed", "step() after close() measures and logs nothing; build a new "
                            "Tracker (start_step= continues the step axis)")  # fmt: skip
            self._step += 1
            return
        now = time.perf_counter()
        self._turns.note_labels(labels)
        ended = self._step if self._step == self._next_sample else None
        self._step += 1
        if ended is not None:
            self._next_sample = self._options.every.next_sampled(self._step)
        starting = self._step if self._step == self._next_sample else None
        self._meter.tick(now, ended is not None or starting is not None, starting is not None)
        if ended is not None or starting is not None:
            self._turns.turn(ended, starting, loss, labels)
        if ended is not None and (found := self._meter.check()) is not None:
            self._warn_once("*", "overhead", found.advice(self._options.every))

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
        self._turns.close()
        self._capturer.remove()
        try:
            self._events.emit(self._detectors.finish())
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

    def _warn_once(self, layer: str, space: str, message: str) -> None:
        """Warn about a (layer, space) once per run; ``"*"`` stands for the whole tracker."""
        if (layer, space) in self._warned:
            return
        self._warned.add((layer, space))
        where = "ndtracker" if layer == "*" else f"ndtracker: layer {layer!r} ({space})"
        message = f"{where}: {message}; training continues"
        warnings.warn(message, RuntimeWarning, stacklevel=_user_stacklevel())


def _warn_at_user(message: str) -> None:
    """Warn (``UserWarning``) at the user's line that built the Tracker."""
    warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside ndtracker, torch and the
    training frameworks (Lightning, transformers, accelerate)."""
    internal = _INTERNAL_DIRS + _framework_dirs()
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


def _framework_dirs() -> tuple[str, ...]:
    """The directories of the training frameworks already imported (a warning raised inside
    ``trainer.fit()`` points at the user's ``fit`` line, not at the framework's loop)."""
    dirs = []
    for name in _FRAMEWORKS:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(dirs)
