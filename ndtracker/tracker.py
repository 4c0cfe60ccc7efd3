"""The Tracker: pick layers, arm hooks on sampled steps, turn captures into logged rows.

The math lives in :mod:`ndtracker.spectra`, the file format in :mod:`ndtracker.store` and the
event logic in :mod:`ndtracker.detect`; this module only wires them to a model and a training loop.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ndtracker import spectra
from ndtracker.layers import DEFAULT_MAX_LAYERS, LayerSpec, TrackedLayer, first_tensor, select_layers
from ndtracker.spectra import METRICS, Job, StreamingSpectrum

log = logging.getLogger("ndtracker")

Space = Literal["activation", "weight"]
SPACES: tuple[str, ...] = ("activation", "weight")
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
    On a sampled step the first training-mode forward output of each layer is captured (the first
    micro-batch under gradient accumulation; eval-mode forwards are ignored unless
    ``track_eval=True``), and after the optimizer step, in :meth:`step`, the weights too. Hooks are
    installed only around sampled steps, so every other step runs PyTorch's no-hook fast path and
    costs the tracker an integer increment and a comparison.

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
    ``status``               string     ``ok``, or why the metrics are NaN: ``nonfinite``, ``zero``,
                                        ``empty``, ``no_tensor``, ``failed``
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
        track_eval: Also capture eval-mode forwards when no training forward came first.
        output_key: For modules returning a dict, the key holding the tensor to measure.
        hooks: ``"sampled"`` (default) installs hooks only around sampled steps;
            ``"permanent"`` keeps gated hooks installed (for ``torch.compile``d models, which
            recompile whenever hooks change).
        detect: Run the online jump and phase detector on ``stable_rank`` (default True).
        start_step: The first step's number, to continue a resumed run's step axis. Default 0.
        flush_secs: Write buffered rows to disk at least this often (default 5 s).
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
        hooks: Literal["sampled", "permanent"] = "sampled",
        detect: bool = True,
        start_step: int = 0,
        flush_secs: float = 5.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._every = _positive_int("every", every)
        self._weight_every = _weight_every(weight_every, self._every)
        self._metrics = frozenset(_check_metrics(metrics))
        self._spaces = _check_spaces(spaces)
        self._estimator = _check_choice("estimator", estimator, ("auto",) + spectra.ESTIMATORS)
        _check_estimator_metrics(self._estimator, self._metrics)
        self._conv = _check_choice("conv", conv, ("channel", "sample"))
        self._hook_mode = _check_choice("hooks", hooks, ("sampled", "permanent"))
        self._max_rows = None if max_rows is None else _positive_int("max_rows", max_rows)
        self._step = _non_negative_int("start_step", start_step)
        self._center, self._track_eval, self._output_key = bool(center), bool(track_eval), output_key
        flush_secs = _positive_number("flush_secs", flush_secs)
        self._layers = select_layers(model, layers, max_layers)
        self._seed, self._generators = int(seed), {}
        self._handles: list[Any] = []
        self._armed = self._closed = False
        self._warned: set[tuple[str, str]] = set()
        self._detectors = _make_detectors(detect, self._layers, self._spaces)
        self._writer = _open_writer(log_dir, self._run_info(model, flush_secs), flush_secs)
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

    def close(self) -> None:
        """Flush the logs and remove every hook. Idempotent; also called on ``with`` exit."""
        if self._closed:
            return
        self._closed = True
        self._disarm()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._emit_events(self._finish_detectors())
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
            layer.capture = None
        if self._hook_mode == "sampled":
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def _install_hooks(self) -> None:
        if "activation" not in self._spaces:
            return
        for layer in self._layers:
            self._handles.append(layer.module.register_forward_hook(self._hook_for(layer)))

    def _hook_for(self, layer: TrackedLayer):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._armed or layer.capture is not None:
                return
            if not module.training and not self._track_eval:
                return
            self._capture(layer, output)

        return hook

    def _capture(self, layer: TrackedLayer, output: Any) -> None:
        """Keep the layer's output as a capped float32 matrix (never raises)."""
        try:
            tensor = first_tensor(output, self._output_key)
            if tensor is None:
                self._warn_once(layer.name, "activation", "its output holds no tensor")
                return
            with torch.no_grad():
                layer.capture = spectra.activation_matrix(
                    tensor,
                    channels_first=layer.channels_first,
                    conv=self._conv,  # type: ignore[arg-type]
                    max_rows=self._max_rows,
                    center=self._center,
                    generator=self._generator(tensor.device),
                )
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
                self._row(step, key, job, result, estimator, loss_value, now)
                for key, job, result, estimator in zip(keys, jobs, table, used)
            ]
            self._writer.append(rows)
            self._emit_events(self._detect(rows))
        except Exception as error:  # a monitor never stops training
            self._warn_once("*", "*", f"sample of step {step} failed: {error!r}")
        finally:
            self._disarm()

    def _jobs(self) -> tuple[list[Job], list[tuple[str, str]]]:
        jobs, keys = [], []
        weights_now = "weight" in self._spaces and self._step % self._weight_every == 0
        for layer in self._layers:
            if layer.capture is not None:
                jobs.append(self._job(layer, "activation", layer.capture))
                keys.append((layer.name, "activation"))
            elif "activation" in self._spaces and self._armed:
                self._warn_once(layer.name, "activation", "no training forward pass in a sampled step")
            if weights_now and layer.weight is not None:
                with torch.no_grad():
                    jobs.append(self._job(layer, "weight", spectra.weight_matrix(layer.weight)))
                keys.append((layer.name, "weight"))
        return jobs, keys

    def _job(self, layer: TrackedLayer, space: str, matrix: torch.Tensor) -> Job:
        state = layer.streams.setdefault(space, StreamingSpectrum())
        estimator = spectra.choose_estimator(tuple(matrix.shape), self._metrics, self._estimator)
        return Job(matrix, estimator, self._metrics, state)

    def _measure(self, jobs: list[Job], keys: list[tuple[str, str]]):
        """All jobs in one batch; if the batch fails, job by job so one bad matrix costs one row."""
        with torch.no_grad():
            try:
                return spectra.measure_many(jobs)
            except Exception:
                table, used = [], []
                for job, key in zip(jobs, keys):
                    try:
                        result, estimator = spectra.measure_many([job])
                        table.append(result[0]), used.append(estimator[0])
                    except Exception as error:
                        self._warn_once(*key, f"measurement failed: {error!r}")
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
        for row in rows:
            detector = self._detectors.get((row["layer"], row["space"]))
            if detector is None:
                continue
            value = row["stable_rank"]
            value = math.nan if value is None else value
            for event in detector.feed(row["step"], value):
                events.append({**event, "layer": row["layer"], "space": row["space"]})
        return events

    def _finish_detectors(self) -> list[dict[str, Any]]:
        events = []
        for (layer, space), detector in self._detectors.items():
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

    def _run_info(self, model: nn.Module, flush_secs: float) -> dict[str, Any]:
        import ndtracker

        options = {
            "every": self._every, "weight_every": self._weight_every,
            "metrics": [m for m in METRICS if m in self._metrics], "spaces": list(self._spaces),
            "estimator": self._estimator, "conv": self._conv, "max_rows": self._max_rows,
            "center": self._center, "track_eval": self._track_eval, "hooks": self._hook_mode,
            "start_step": self._step, "flush_secs": flush_secs, "seed": self._seed,
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


# ------------------------------------------------------------------------------ wiring


def _open_writer(log_dir: str | None, run_info: dict[str, Any], flush_secs: float):
    from ndtracker import store

    if log_dir is None:
        log_dir = time.strftime("runs/ndtracker-%Y%m%d-%H%M%S")
    path = store.validate_log_dir(log_dir)
    return store.RunWriter(path, run_info=run_info, flush_secs=flush_secs)


def _make_detectors(enabled: bool, layers: list[TrackedLayer], spaces: Sequence[str]) -> dict:
    if not enabled:
        return {}
    from ndtracker.detect import OnlineDetector

    return {
        (layer.name, space): _StepDetector(OnlineDetector(), "stable_rank")
        for layer in layers
        for space in spaces
        if space == "activation" or layer.weight is not None
    }


class _StepDetector:
    """An online detector over one series that reports events in training steps, not indices."""

    def __init__(self, detector: Any, metric: str) -> None:
        self._detector, self._metric, self._steps = detector, metric, []
        self._offset = 0

    def feed(self, step: int, value: float) -> list[dict[str, Any]]:
        self._steps.append(step)
        return self._to_rows(self._detector.update(value))

    def finish(self) -> list[dict[str, Any]]:
        return self._to_rows(self._detector.finish())

    def _to_rows(self, events: list[Any]) -> list[dict[str, Any]]:
        rows = [self._row(event) for event in events]
        self._forget_old_steps()
        return rows

    def _row(self, event: Any) -> dict[str, Any]:
        step = self._steps[event.index - self._offset]
        if hasattr(event, "direction"):
            return {"step": step, "metric": self._metric, "kind": "jump",
                    "direction": int(event.direction), "size": float(event.size),
                    "z": float(event.z), "phase": None}  # fmt: skip
        return {"step": step, "metric": self._metric, "kind": "phase", "direction": None,
                "size": _optional_float(getattr(event, "change", None)), "z": None,
                "phase": str(getattr(event, "kind", getattr(event, "phase", "")))}  # fmt: skip

    def _forget_old_steps(self, keep: int = 4096) -> None:
        """Bound the step list: the detector's lag is far shorter than ``keep`` samples."""
        if len(self._steps) > 2 * keep:
            drop = len(self._steps) - keep
            self._steps = self._steps[drop:]
            self._offset += drop


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
