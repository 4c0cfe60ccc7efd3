"""When each part of a sample is measured, so that all rows of a step describe one parameter state.

A sampled step ``t`` is described by the weights its forward uses, that is the weights *before*
optimizer update ``t``. They are measured when step ``t`` begins: at the end of the
:meth:`~ndtracker.Tracker.step` call that ends step ``t - 1`` (at construction for the first
step), together with the probe's activations when there is a probe, in one batch with one host
transfer. The rows wait on the host (a few floats each) until the call that ends step ``t`` logs
them with the step's loss and, without a probe, with the activations its training forward showed.
When that same call begins a sampled step too (``every=1``), both are measured in one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ndtracker.tracking.capture import Capturer
from ndtracker.tracking.layers import TrackedLayer, warn_unmeasured
from ndtracker.tracking.options import Options
from ndtracker.tracking.probe import FORMS, Probe, ProbeRunner, as_probe
from ndtracker.tracking.sample import (
    NOT_REACHED, Batch, activation_jobs, log_row, measure_batch, measure_early, weight_jobs,
)
from ndtracker.vocabulary import SPACES

Warn = Callable[[str, str, str], None]
Row = dict[str, Any]
Part = tuple[int, str | None, Batch]  # (step, source of its activation rows or None, jobs)

TRAIN, PROBE = "train", "probe"


class Sampler:
    """The measurements of the sampled steps, each at its moment.

    Args:
        layers: The tracked layers.
        options: The Tracker's checked options.
        capturer: The hooks, armed here for the forwards to capture.
        probe: Runs the probe batch, or None to measure the training forward.
        warn: ``warn(layer, space, message)``, the Tracker's warn-once.
        parallel: Measures over a torch.distributed job, or None.
        on_probe: Called with the step after each probe forward that ran, while the layers still
            hold its captures and example rows (before they are measured); must not raise.
    """

    def __init__(
        self, layers: list[TrackedLayer], options: Options, capturer: Capturer, probe: ProbeRunner | None,
        warn: Warn, parallel: Any = None, on_probe: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self._layers, self._options, self._capturer, self._probe, self._warn = layers, options, capturer, probe, warn
        self._on_probe = on_probe
        self._parallel = parallel  # measures over a torch.distributed job, or None
        self._watch_training = "activation" in options.spaces and probe is None
        self._order = {(layer.name, space): (i, j) for i, layer in enumerate(layers) for j, space in enumerate(SPACES)}
        self._pending: tuple[int, list[Row]] | None = None  # rows measured when their step began
        if parallel is None:  # a sample holding too many bytes of captures measures them in the hook
            capturer.measure_early = lambda held: measure_early(held, options, warn)

    def turn(self, ended: int | None, starting: int | None) -> list[Row]:
        """End the sampled step ``ended`` and begin the sampled step ``starting`` (either may be None).

        Returns:
            The rows of ``ended`` (without ``loss`` and ``wall_time``), in layer order; [] if None.
        """
        found: dict[int, list[Row]] = {}
        local: list[Part] = []  # measured together below (one batch, one transfer)
        try:
            if ended is not None and self._watch_training:
                self._take(ended, TRAIN, True, False, local, found)
            self._capturer.disarm()  # the probe's forward starts from no capture
            if starting is not None:
                self._begin(starting, local, found)
            for step, rows in self._measure(local).items():
                found.setdefault(step, []).extend(rows)
        finally:  # whatever failed, the next step captures afresh
            self._capturer.disarm()
            if starting is not None and self._watch_training:
                self._capturer.arm()
        done = self._take_pending(ended) + found.get(ended, []) if ended is not None else []
        if starting is not None:
            self._pending = (starting, found.get(starting, []))
        return sorted(done, key=lambda row: self._order[(row["layer"], row["space"])])

    def drop(self) -> None:
        """Forget the step begun but never ended, and stop capturing."""
        self._pending = None
        self._capturer.disarm()

    def _begin(self, step: int, local: list[Part], found: dict[int, list[Row]]) -> None:
        """What describes the start of ``step``: the probe's activations and the weights."""
        probed = False
        if self._probe is not None:  # (a probe implies activations: checked at construction)
            ran = self._run_probe()
            if ran and self._on_probe is not None:
                self._on_probe(step)  # the probe's labelled read-backs, from the same captures
            probed = ran or self._parallel is not None  # every rank, the same collectives
        weights = self._options.weights_at(step)
        if weights:
            warn_unmeasured(self._layers, self._warn)  # a replaced module or a complex weight: say why
        self._take(step, PROBE, probed, weights, local, found)

    def _run_probe(self) -> bool:
        """Run the probe with the hooks capturing (they keep its captures until :meth:`turn` ends)."""
        self._capturer.arm(probing=True)
        try:
            self._probe.run()  # type: ignore[union-attr]
            return True
        except Exception as error:  # a monitor never stops training
            self._warn("*", "probe", f"the probe's forward failed: {error!r}")
            return False

    def _take(
        self, step: int, source: str, activations: bool, weights: bool, local: list[Part], found: dict[int, list[Row]]
    ) -> None:
        """The jobs of ``step`` (into ``local``), or its rows measured over the job (into ``found``)."""
        if self._parallel is not None:
            found.setdefault(step, []).extend(self._global_rows(step, source, activations, weights))
            return
        if activations:
            missing = NOT_REACHED if source == PROBE else None
            local.append((step, source, activation_jobs(self._layers, self._options, self._warn, missing)))
        if weights:
            local.append((step, None, weight_jobs(self._layers, self._options)))

    def _global_rows(self, step: int, source: str, activations: bool, weights: bool) -> list[Row]:
        """Measure ``step``'s activations and/or weights over the distributed job (every rank)."""
        spaces = tuple(s for s, wanted in zip(SPACES, (activations, weights)) if wanted and s in self._options.spaces)
        if not spaces:
            return []
        options = dataclasses.replace(self._options, spaces=spaces)
        jobs, keys, results = self._parallel.measure(self._layers, options, step, weights, self._warn)
        return [
            log_row(step, (name, space), jobs[i], results[i], self._options.metrics, self._warn)
            | {"source": source if space == "activation" else None}
            for name, space, i in keys
        ]

    def _measure(self, parts: list[Part]) -> dict[int, list[Row]]:
        """Measure every part in one batch; the rows of each step."""
        batch, spans = Batch(), []
        for step, source, part in parts:
            start = len(batch.keys)
            batch.extend(part)
            spans.append((step, source, batch.keys[start:]))
        if not batch.jobs:
            return {}
        results = measure_batch(batch, self._warn)
        rows: dict[int, list[Row]] = {}
        for step, source, keys in spans:
            rows.setdefault(step, []).extend(
                log_row(step, (name, space), batch.jobs[i], results[i], self._options.metrics, self._warn)
                | {"source": source}
                for name, space, i in keys
            )
        return rows

    def _take_pending(self, step: int) -> list[Row]:
        pending, self._pending = self._pending, None
        return pending[1] if pending is not None and pending[0] == step else []


def checked_probe(
    model: Any, probe: Any, capturer: Capturer, layers: list[TrackedLayer], options: Options, parallel: Any
) -> ProbeRunner | None:
    """The ``probe=`` option's runner, checked (None without a probe).

    In a torch.distributed job every rank checks its own probe, and if one fails all raise (the
    others would otherwise wait for it in the writer's broadcast).

    Raises:
        ValueError: As :func:`~ndtracker.tracking.probe.as_probe` and :func:`check_probe`, or
            ``linear_probes=True`` with a probe without labels; on every rank when one failed.
    """
    error, runner = None, None
    try:
        runner = _probe_runner(model, as_probe(probe), capturer, layers, options)
    except Exception as caught:
        error = caught
    if parallel is not None:
        parallel.raise_together(error, "probe")
    if error is not None:
        raise error
    return runner


def _probe_runner(
    model: Any, probe: Probe | None, capturer: Capturer, layers: list[TrackedLayer], options: Options
) -> ProbeRunner | None:
    if probe is None:
        return None
    if options.linear_probes and probe.labels is None:
        raise ValueError("linear_probes=True with probe= needs the probe's labels: pass probe=(inputs, labels) "
                         "or ndtracker.Probe(args=..., labels=y)")  # fmt: skip
    runner = ProbeRunner(model, probe)
    check_probe(runner, capturer, layers, options)
    return runner


def check_probe(runner: ProbeRunner, capturer: Capturer, layers: list[TrackedLayer], options: Options) -> None:
    """Run the probe once, at construction: the model must take it and it must reach a layer.

    Raises:
        ValueError: Activations are not measured, the model's forward raised on the probe, the
            probe reached none of the tracked layers, or it gives one a single (centred) row.
    """
    if "activation" not in options.spaces:
        raise ValueError(f"probe measures activations, but spaces={options.spaces!r} leaves them out")
    capturer.arm(probing=True)
    try:
        runner.run()
        shapes = {layer.name: tuple(layer.capture.shape) for layer in layers if layer.capture is not None}
    except Exception as error:
        raise ValueError(f"probe: the model cannot take the probe ({error!r}); {FORMS}") from error
    finally:
        capturer.disarm()
    if not shapes:
        names = [layer.name for layer in layers][:8]
        raise ValueError(f"probe: its forward reached none of the tracked layers {names}")
    single = {name: shape for name, shape in shapes.items() if shape[0] < 2}
    if single and options.center:
        raise ValueError(
            f"probe: it gives these layers a single activation row once centred, which has no spectrum: "
            f"{single} (rows x features); pass a probe batch of at least 2 samples"
        )
