"""The Tracker: pick layers, arm hooks on sampled steps, turn captures into logged rows.

The math lives in :mod:`ndtracker.spectra`, the file format in :mod:`ndtracker.store` and the
event logic in :mod:`ndtracker.detect`; this module only wires them to a model and a training loop.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ndtracker import spectra
from ndtracker.layers import (
    DEFAULT_MAX_LAYERS, LayerSpec, TrackedLayer, first_tensor, is_compiled, select_layers, uncompiled,
)  # fmt: skip
from ndtracker.spectra import METRICS, Job, StreamingSpectrum

log = logging.getLogger("ndtracker")

Space = Literal["activation", "weight"]
SPACES: tuple[str, ...] = ("activation", "weight")
HOOK_MODES: tuple[str, ...] = ("auto", "sampled", "permanent")
DEFAULT_MAX_BUFFER_ROWS = 200_000
DEFAULT_METRICS: tuple[str, ...] = ("stable_rank", "participation_ratio")
_INTERNAL_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (spectra, torch))


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

    Args:
        model: The model to watch.
        every: Sample every this many steps (positive int). Default 5.
        log_dir: Run directory for the Parquet logs; created if missing. Default
            ``runs/ndtracker-<date>-<time>``.
        layers: Which modules to track: names, glob patterns (``"encoder.*.fc1"``), module types or
            module instances, alone or in a list. Default: every Linear, Conv, ConvTranspose,
            MultiheadAttention and RNN/LSTM/GRU module, and any other leaf module with a 2-D+
            ``weight`` except embeddings; at most ``max_layers`` of them, evenly spaced over depth.
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
        max_layers: Cap on the default layer selection (default 64); ``None`` for no cap.
        weight_every: Measure weights every this many steps, a multiple of ``every``. Default:
            ``every`` (weights on every sampled step).
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
        flush_secs: Write buffered rows to disk at least this often (default 5 s).
        max_buffer_rows: Rows kept in memory per table while writing fails (default 200 000,
            about 120 MB at some 600 bytes a row; a run logging 128 rows a sample keeps 1 500
            samples).
        seed: Seed of the row subsample.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or an option has the wrong type.
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._model = uncompiled(model)
        self._every = _positive_int("every", every)
        self._weight_every = _weight_every(weight_every, self._every)
        self._metrics = frozenset(_check_metrics(metrics))
        self._spaces = _check_spaces(spaces)
        self._estimator = _check_choice("estimator", estimator, ("auto",) + spectra.ESTIMATORS)
        _check_estimator_metrics(self._estimator, self._metrics)
        self._conv = _check_choice("conv", conv, ("channel", "sample"))
        self._hook_mode = _hook_mode(_check_choice("hooks", hooks, HOOK_MODES), model)
        self._max_rows = None if max_rows is None else _positive_int("max_rows", max_rows)
        self._step = _non_negative_int("start_step", start_step)
        self._center, self._track_eval, self._output_key = bool(center), bool(track_eval), output_key
        flush_secs = _positive_number("flush_secs", flush_secs)
        max_buffer_rows = _positive_int("max_buffer_rows", max_buffer_rows)
        self._layers = select_layers(self._model, layers, max_layers)
        self._seed, self._generators = int(seed), {}
        self._handles: list[Any] = []
        self._armed = self._closed = False
        self._warned: set[tuple[str, str]] = set()
        self._on_forward = _opaque_to_compiler(self._capture_forward, self._hook_mode)
        self._new_detector = _detector_factory(detect)
        self._detectors: dict[tuple[str, str], _StepDetector | None] = {}
        run_info = self._run_info(self._model, flush_secs, max_buffer_rows)
        self._writer = _open_writer(log_dir, run_info, flush_secs, max_buffer_rows)
        if self._hook_mode == "permanent":
            self._install_hooks()
        if self._is_sampled(self._step):
            self._arm()

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

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """End the current training step; measure it if it was sampled.

        Call once per optimizer step, after ``optimizer.step()``. Never raises over a measurement:
        a failure is logged as NaN with a ``status`` and warned once per layer.

        Args:
            loss: The step's loss (float, 0-d tensor or None). A tensor is read only on sampled
                steps.
        """
        if self._armed:
            self._finish_sample(loss)
        self._step += 1
        if self._is_sampled(self._step) and not self._closed:
            self._arm()

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
        self._disarm()
        self._remove_hooks()
        try:
            self._emit_events(self._finish_detectors())
        except Exception as error:  # the logs must be closed whatever the detector does
            self._warn_once("*", "events", f"the online detector failed at close: {error!r}")
        finally:
            self._writer.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker(every={self._every}, layers={len(self._layers)}, step={self._step}, "
            f"log_dir={self.log_dir!r}, closed={self._closed})"
        )

    # ---------------------------------------------------------------------------- sampling

    def _is_sampled(self, step: int) -> bool:
        return step % self._every == 0

    def _arm(self) -> None:
        """Make the hooks capture during this step."""
        self._armed = True
        if self._hook_mode == "sampled" and "activation" in self._spaces:
            self._install_hooks()

    def _disarm(self) -> None:
        self._armed = False
        for layer in self._layers:
            layer.clear()
        if self._hook_mode == "sampled":
            self._remove_hooks()

    def _install_hooks(self) -> None:
        if "activation" not in self._spaces:
            return
        for layer in self._layers:
            self._handles.append(layer.module.register_forward_hook(_ActivationHook(self, layer)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _capture_forward(self, layer: TrackedLayer, module: nn.Module, output: Any) -> None:
        """Capture this forward's output unless the step already holds a better one (never raises).

        The first training forward wins; with ``track_eval``, an eval or ``no_grad`` forward is
        kept until a training forward replaces it.
        """
        if layer.captured_in_training:
            return
        training = torch.is_grad_enabled() and (module.training or self._model.training)
        if training or (self._track_eval and layer.capture is None):
            self._capture(layer, output, training)

    def _capture(self, layer: TrackedLayer, output: Any, training: bool) -> None:
        """Keep the layer's output as a capped float32 matrix (never raises)."""
        try:
            tensor = first_tensor(output, self._output_key)
            if tensor is None:
                self._warn_once(layer.name, "activation", _NO_TENSOR.format(type(output).__name__))
                return
            with torch.no_grad(), _autocast_off([tensor.device.type]):
                matrix = spectra.activation_matrix(
                    tensor,
                    channels_first=layer.channels_first,
                    conv=self._conv,  # type: ignore[arg-type]
                    max_rows=self._max_rows,
                    center=self._center,
                    generator=self._generator(tensor.device),
                )
                layer.capture = _own_copy(matrix, tensor)
            layer.captured_in_training = training
        except Exception as error:  # a monitor never stops training
            self._warn_once(layer.name, "activation", f"capture failed: {error!r}")

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    # ---------------------------------------------------------------------------- measuring

    def _finish_sample(self, loss: float | torch.Tensor | None) -> None:
        """Measure the captures and weights of the sampled step, log the rows, disarm."""
        step, now, loss_value = self._step, time.time(), _loss_value(loss)
        try:
            jobs, keys = self._jobs()
            table, used = self._measure(jobs, keys)
            rows = [
                self._row(step, (name, space), jobs[i], table[i], used[i], loss_value, now)
                for name, space, i in keys
            ]
            self._writer.append(rows)
            self._emit_events(self._detect(rows))
        except Exception as error:  # a monitor never stops training
            self._warn_once("*", "*", f"sample of step {step} failed: {error!r}")
        finally:
            self._disarm()

    def _jobs(self) -> tuple[list[Job], list[tuple[str, str, int]]]:
        """The matrices to measure, and per row to log: (layer, space, index of its job).

        A weight shared by several layers (tied embeddings) is measured once, logged under each.
        """
        jobs: list[Job] = []
        keys: list[tuple[str, str, int]] = []
        weight_jobs: dict[int, int] = {}
        weights: list[torch.Tensor] = []  # parametrized weights are new tensors at each access
        for layer in self._layers:
            if layer.capture is not None:
                keys.append((layer.name, "activation", len(jobs)))
                jobs.append(self._job(layer, "activation", layer.capture))
            elif "activation" in self._spaces:
                self._warn_once(layer.name, "activation", _NO_FORWARD)
            weight = layer.weight if self._weights_now() else None
            if weight is not None:
                if id(weight) not in weight_jobs:  # `weights` keeps each alive, so ids stay unique
                    weight_jobs[id(weight)] = len(jobs)
                    weights.append(weight)
                    jobs.append(self._job(layer, "weight", spectra.weight_matrix(weight)))
                keys.append((layer.name, "weight", weight_jobs[id(weight)]))
        return jobs, keys

    def _weights_now(self) -> bool:
        return "weight" in self._spaces and self._step % self._weight_every == 0

    def _job(self, layer: TrackedLayer, space: str, matrix: torch.Tensor) -> Job:
        state = layer.streams.setdefault(space, StreamingSpectrum())
        estimator = spectra.choose_estimator(tuple(matrix.shape), self._metrics, self._estimator)
        return Job(matrix, estimator, self._metrics, state)

    def _measure(self, jobs: list[Job], keys: list[tuple[str, str, int]]):
        """All jobs in one batch; if the batch fails, job by job so one bad matrix costs one row."""
        with torch.no_grad(), _autocast_off({job.matrix.device.type for job in jobs}):
            try:
                return spectra.measure_many(jobs)
            except Exception:
                return self._measure_one_by_one(jobs, {i: (name, space) for name, space, i in keys})

    def _measure_one_by_one(self, jobs: list[Job], owners: dict[int, tuple[str, str]]):
        table: list[list[float] | None] = []
        used: list[str] = []
        for index, job in enumerate(jobs):
            try:
                result, estimator = spectra.measure_many([job])
                table.append(result[0]), used.append(estimator[0])
            except Exception as error:
                self._warn_once(*owners[index], f"measurement failed: {error!r}")
                table.append(None), used.append(job.estimator)
        return table, used

    def _row(self, step, key, job, result, estimator, loss, now) -> dict[str, Any]:
        rows, cols = job.matrix.shape
        values, status = _values_and_status(result, rows, cols)
        if status not in ("ok", "zero", "empty"):
            self._warn_once(*key, f"metrics are NaN at step {step} ({status})")
        row = {"step": step, "layer": key[0], "space": key[1], "rows": rows, "cols": cols}
        for name, value in zip(METRICS, values):
            row[name] = _metric_cell(name, value, name in self._metrics)
        row.update(estimator=estimator, loss=loss, wall_time=now, status=status)
        return row

    def _warn_once(self, layer: str, space: str, message: str) -> None:
        if (layer, space) in self._warned:
            return
        self._warned.add((layer, space))
        where = "ndtracker" if layer == "*" else f"ndtracker: layer {layer!r} ({space})"
        message = f"{where}: {message}; training continues"
        warnings.warn(message, RuntimeWarning, stacklevel=_user_stacklevel())

    # ---------------------------------------------------------------------------- detection

    def _detect(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events = []
        for row in rows if self._new_detector is not None else []:
            key = (row["layer"], row["space"])
            events += [{**event, "layer": key[0], "space": key[1]} for event in self._feed(key, row)]
        return events

    def _feed(self, key: tuple[str, str], row: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed the series' detector (made at its first row); one that fails is dropped, warned once."""
        if key not in self._detectors:
            self._detectors[key] = _StepDetector(self._new_detector(), "stable_rank")
        detector = self._detectors[key]
        value = math.nan if row["stable_rank"] is None else row["stable_rank"]
        try:
            return [] if detector is None else detector.feed(row["step"], value)
        except Exception as error:
            self._detectors[key] = None
            self._warn_once(*key, f"online detection stopped: {error!r}")
            return []

    def _finish_detectors(self) -> list[dict[str, Any]]:
        events = []
        for (layer, space), detector in self._detectors.items():
            if detector is not None:
                events += [{**e, "layer": layer, "space": space} for e in detector.finish()]
        return events

    def _emit_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        now = time.time()
        for event in events:
            event.setdefault("wall_time", now)
            log.info("%s", _describe_event(event))
        try:
            self._writer.append_events(events)
        except Exception as error:
            self._warn_once("*", "events", f"could not log events: {error!r}")

    # ---------------------------------------------------------------------------- run info

    def _run_info(self, model: nn.Module, flush_secs: float, max_buffer_rows: int) -> dict[str, Any]:
        import ndtracker

        options = {
            "every": self._every, "weight_every": self._weight_every,
            "metrics": [m for m in METRICS if m in self._metrics], "spaces": list(self._spaces),
            "estimator": self._estimator, "conv": self._conv, "max_rows": self._max_rows,
            "center": self._center, "track_eval": self._track_eval, "hooks": self._hook_mode,
            "start_step": self._step, "flush_secs": flush_secs, "max_buffer_rows": max_buffer_rows,
            "seed": self._seed,
        }  # fmt: skip
        layers = [layer.info() for layer in self._layers]
        return {
            "model": type(model).__name__, "options": options, "layers": layers,
            "ndtracker_version": ndtracker.__version__, "torch_version": torch.__version__,
        }  # fmt: skip


# ------------------------------------------------------------------------------ rows


def _values_and_status(result: list[float] | None, rows: int, cols: int):
    if result is None:
        return [math.nan] * 4, "failed"
    values, finite, energy = result[:4], result[5], result[6]
    if rows == 0 or cols == 0:
        return [math.nan] * 4, "empty"
    if finite < 1:
        return [math.nan] * 4, "nonfinite"
    if not energy > 0:
        return [math.nan] * 4, "zero"
    return values, "ok"


def _metric_cell(name: str, value: float, computed: bool) -> float | int | None:
    if not computed:
        return None
    if name == "energy90":
        return None if math.isnan(value) else int(round(value))
    return value


def _loss_value(loss: float | torch.Tensor | None) -> float | None:
    if loss is None:
        return None
    try:
        return float(loss.detach().float().item() if isinstance(loss, torch.Tensor) else loss)
    except (TypeError, ValueError, RuntimeError):
        return None


def _describe_event(event: dict[str, Any]) -> str:
    where = f"{event['layer']} ({event['space']}) step {event['step']}"
    if event["kind"] == "jump":
        arrow = "up" if event.get("direction", 0) > 0 else "down"
        return f"jump {arrow} in {event['metric']} at {where}: size {event.get('size'):.3g}"
    return f"{event['metric']} enters {event.get('phase')} at {where}"


# ------------------------------------------------------------------------------ hooks

_NO_FORWARD = (
    "no training forward pass in a sampled step (forwards in eval mode or under torch.no_grad() "
    "are not captured: pass track_eval=True to measure them, or layers=[...] to leave this layer "
    "out; with torch.compile applied after the Tracker was built, pass hooks='permanent')"
)
_NO_TENSOR = (
    "its output (a {}) holds no tensor; pass output_key='<key or attribute>' to name the one to "
    "measure, or layers=[...] to leave this layer out"
)


class _ActivationHook:
    """The forward hook of one tracked layer: hand the output to the tracker while it is armed.

    Only ``tracker._armed`` is read before the hand-over, so a ``torch.compile``d model guards on
    that flag (one compiled variant per value, no recompilation per step) and runs the capture,
    opaque to the compiler, only on sampled steps. A pickled or deep-copied hook is inert: a model
    saved or copied while hooks are installed stays picklable and the copy never feeds the tracker.
    """

    def __init__(self, tracker: Tracker | None, layer: TrackedLayer | None) -> None:
        self._tracker, self._layer = tracker, layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        tracker = self._tracker
        if tracker is not None and tracker._armed:
            tracker._on_forward(self._layer, module, output)

    def __reduce__(self) -> tuple[type, tuple[None, None]]:
        return (_ActivationHook, (None, None))


def _hook_mode(requested: str, model: nn.Module) -> str:
    """Resolve ``hooks="auto"``: permanent, gated hooks for compiled models, sampled otherwise."""
    if requested != "auto":
        return requested
    return "permanent" if is_compiled(model) else "sampled"


def _opaque_to_compiler(function: Any, hook_mode: str) -> Any:
    """Wrap the capture so ``torch.compile`` calls it as is instead of tracing it (permanent hooks)."""
    if hook_mode != "permanent":
        return function
    return torch.compiler.disable(function)


def _own_copy(matrix: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Return ``matrix``, copied if it shares memory with the layer output.

    A view of the output (``center=False``, float32, no subsample) would keep the whole output
    alive until the step ends and would see later in-place changes (``ReLU(inplace=True)``).
    """
    if matrix.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
        return matrix.clone()
    return matrix


@contextlib.contextmanager
def _autocast_off(device_types: Iterable[str]):
    """Run the block in the default precision even inside the user's ``torch.autocast``."""
    with contextlib.ExitStack() as stack:
        for device_type in device_types:
            try:
                stack.enter_context(torch.autocast(device_type, enabled=False))
            except (RuntimeError, ValueError):  # a device type without autocast
                pass
        yield


# ------------------------------------------------------------------------------ wiring


def _open_writer(log_dir: str | None, run_info: dict[str, Any], flush_secs: float, max_buffer_rows: int):
    from ndtracker import store

    if log_dir is None:
        log_dir = time.strftime("runs/ndtracker-%Y%m%d-%H%M%S")
    path = store.validate_log_dir(log_dir)
    return store.RunWriter(path, run_info=run_info, flush_secs=flush_secs, max_buffer_rows=max_buffer_rows)


def _detector_factory(enabled: bool) -> Any:
    """The online detector class when detection is on (imported now, so a broken install fails
    at construction), else None."""
    if not enabled:
        return None
    from ndtracker.detect import OnlineDetector

    return OnlineDetector


class _StepDetector:
    """An online detector over one series that reports events in training steps, not indices."""

    def __init__(self, detector: Any, metric: str) -> None:
        self._detector, self._metric, self._steps = detector, metric, _StepAxis()

    def feed(self, step: int, value: float) -> list[dict[str, Any]]:
        self._steps.append(step)
        return [self._row(event) for event in self._detector.update(value)]

    def finish(self) -> list[dict[str, Any]]:
        return [self._row(event) for event in self._detector.finish()]

    def _row(self, event: Any) -> dict[str, Any]:
        step = self._steps[event.index]
        if hasattr(event, "direction"):
            return {"step": step, "metric": self._metric, "kind": "jump",
                    "direction": int(event.direction), "size": float(event.size),
                    "z": float(event.z), "phase": None}  # fmt: skip
        return {"step": step, "metric": self._metric, "kind": "phase", "direction": None,
                "size": _optional_float(getattr(event, "change", None)), "z": None,
                "phase": str(getattr(event, "kind", getattr(event, "phase", "")))}  # fmt: skip


class _StepAxis:
    """The training step of each sample of a series, stored as arithmetic runs.

    Samples are usually evenly spaced, so memory grows with the number of irregularities (a
    missed sample, a change of cadence), not with the run's length, and any index, however old
    (a phase change found at ``finish()``), still maps to its step.
    """

    def __init__(self) -> None:
        self._runs: list[list[int]] = []  # [first index, first step, stride, count]
        self._count = 0

    def append(self, step: int) -> None:
        run = self._runs[-1] if self._runs else None
        if run is not None and run[3] == 1:
            run[2], run[3] = step - run[1], 2
        elif run is not None and step == run[1] + run[2] * run[3]:
            run[3] += 1
        else:
            self._runs.append([self._count, step, 0, 1])
        self._count += 1

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self._count:
            raise IndexError(f"sample index {index} out of range 0..{self._count - 1}")
        run = self._runs[bisect.bisect_right(self._runs, [index, math.inf]) - 1]
        return run[1] + run[2] * (index - run[0])


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside ndtracker and torch."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ------------------------------------------------------------------------------ validation


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _weight_every(value: int | None, every: int) -> int:
    if value is None:
        return every
    value = _positive_int("weight_every", value)
    if value % every:
        raise ValueError(f"weight_every must be a multiple of every={every}, got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty selection of {METRICS}, got {metrics!r}")
    return tuple(metrics)


def _check_spaces(spaces: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (spaces,) if isinstance(spaces, str) else tuple(spaces)
    if not chosen or any(s not in SPACES for s in chosen):
        raise ValueError(f"spaces must be 'activation', 'weight' or both, got {spaces!r}")
    return chosen


def _check_estimator_metrics(estimator: str, metrics: frozenset[str]) -> None:
    if estimator == "randomized" and spectra.FULL_SPECTRUM & metrics:
        raise ValueError(
            f"estimator='randomized' gives stable_rank and participation_ratio only, got metrics "
            f"{sorted(metrics)}; use estimator='auto' or 'exact' for effective_rank and energy90"
        )
