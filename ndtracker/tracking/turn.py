"""The turn of a sampled step: what the Tracker measures, reads back and logs when a step ends or begins.

A sampled step ``t`` is logged when it ends and described by the weights its forward used (see
:mod:`~ndtracker.tracking.sampler` for the spectra). Around the spectra, one turn also:

- when ``t`` ends: enqueues the class geometry and linear probes of its training forward's
  examples (with ``step(labels=...)``, without a probe batch), takes its gradient norms (left on
  the device) and the examples its similarity compares, before the captures are dropped;
- when ``t`` begins: enqueues the condensation of its weights and, with a labelled probe batch,
  the class geometry and linear probes of the probe's examples (from the probe's own forward,
  while its captures are held);
- after the spectra's one transfer: reads all of that back in one more transfer per device
  (:func:`~ndtracker.tracking.geometry.finish_all`); what was measured when ``t`` began waits on
  the host (:class:`Held`) until ``t`` ends and is logged with it.

So every row of step ``t``, in every table, describes the same parameter state. Class rows carry
``source`` (``train`` or ``probe``) as the activation rows do. Nothing here raises over a
measurement: a failure is warned about once and training goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ndtracker.tracking import geometry
from ndtracker.tracking.capture import Capturer
from ndtracker.tracking.events import EventEmitter, SeriesDetectors
from ndtracker.tracking.extras import NO_LABELS, Extras, kept_examples
from ndtracker.tracking.geometry import Finished, Pending
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.tracking.probe import ProbeRunner
from ndtracker.tracking.sample import loss_value
from ndtracker.tracking.sampler import PROBE, TRAIN, Sampler
from ndtracker.tracking.sinks import SinkFanout

Warn = Callable[[str, str, str], None]

UNUSED_LABELS = (
    "step(labels=...) is not used with probe=: the training forward is not measured; the class "
    "geometry and linear probes come from the probe batch: pass its labels as probe=(inputs, labels) "
    "or ndtracker.Probe(..., labels=y)"
)


@dataclass
class Held:
    """What was measured when a sampled step began, logged when it ends."""

    step: int
    finished: Finished = field(default_factory=Finished)
    similarity: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Beginning:
    """The step that begins, while it is measured: its pending read-backs and its probe's kept examples."""

    step: int
    pending: Pending = field(default_factory=Pending)
    kept: list[tuple[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class Ending:
    """What the training forward of the step that ends left, taken before its captures drop."""

    pending: Pending = field(default_factory=Pending)
    kept: list[tuple[str, torch.Tensor]] = field(default_factory=list)


class Turns:
    """The turns of one Tracker's sampled steps, from measurement to the logs and the detectors.

    Args:
        layers: The tracked layers.
        options: The Tracker's checked options.
        capturer: The hooks and captures.
        probe: Runs the probe batch, or None to measure the training forward.
        parallel: Measures over a torch.distributed job, or None.
        outputs: ``(writer, sinks, detectors, emitter)``: where a sample's rows and events go.
        warn: The Tracker's warn-once.
    """

    def __init__(
        self, layers: list[TrackedLayer], options: Options, capturer: Capturer, probe: ProbeRunner | None,
        parallel: Any, outputs: tuple[Any, SinkFanout, SeriesDetectors, EventEmitter], warn: Warn,
    ) -> None:  # fmt: skip
        self._layers, self._options, self._capturer, self._probe, self._warn = layers, options, capturer, probe, warn
        self._writer, self._sinks, self._detectors, self._emitter = outputs
        self.extras = Extras(layers, options, warn)
        self.sampler = Sampler(layers, options, capturer, probe, warn, parallel, on_probe=self._probed)
        labels = None if probe is None else probe.labels
        self._probe_labels: np.ndarray | None = None if labels is None else labels.numpy()
        if self._probe_labels is not None:
            capturer.examples = True  # the probe's rows are examples, as its labels are
        self._beginning = Beginning(-1)  # filled while the step that begins is measured
        self._held: Held | None = None

    def note_labels(self, labels: Any) -> None:
        """``step(labels=...)`` was called: from now on the training forward keeps example rows."""
        if labels is None:
            return
        if self._probe is None:
            self._capturer.examples = True  # from now on, sequence and conv outputs too
        else:
            self._warn("*", "labels", UNUSED_LABELS)

    def turn(self, ended: int | None, starting: int | None, loss: Any = None, labels: Any = None) -> None:
        """Log the sampled step that ended and measure the start of the sampled step that begins."""
        now = time.time()
        try:
            ending = self._end(ended, labels) if ended is not None else Ending()
            self._beginning = self._begin(starting) if starting is not None else Beginning(-1)
            rows = self.sampler.turn(ended, starting)
            done, begun = geometry.finish_all([ending.pending, self._beginning.pending], self._warn)
            held = self._take_held(ended)
            if starting is not None:
                self._hold(starting, begun)
            if ended is not None:
                similarity = held.similarity or self.extras.similarity(ended, ending.kept, now)
                self._log(ended, rows, (done, held.finished), similarity, loss, now)
        except Exception as error:  # a monitor never stops training
            self._warn("*", "*", f"sample of step {ended if ended is not None else starting} failed: {error!r}")
        finally:
            self._beginning = Beginning(-1)
            if starting is not None:
                self.extras.arm(starting)  # gradient hooks for the step that begins

    def close(self) -> None:
        """Forget the step begun but never ended; drop the captures and the gradient hooks."""
        self._held = None
        self.sampler.drop()
        self.extras.disarm()

    def _end(self, step: int, labels: Any) -> Ending:
        """Enqueue what the step that ends left: its gradient norms and, without a probe, its examples."""
        ending = Ending()
        try:
            ending.pending.gradients = self.extras.gradients()
            if self._probe is not None:
                return ending
            if self._options.linear_probes and labels is None:
                self._warn("*", "probes", NO_LABELS)
            host = geometry.host_labels(labels, self._warn) if labels is not None else None
            geometry.enqueue(
                ending.pending, self._layers, host, self._capturer.example_indices, step, self._warn,
                linear_probes=self._options.linear_probes,
            )  # fmt: skip
            ending.kept = kept_examples(self._layers) if self._options.similarity else []
        finally:
            self.extras.disarm()
        return ending

    def _begin(self, step: int) -> Beginning:
        """The step that begins: its weights' condensation, enqueued now (its probe adds to it)."""
        beginning = Beginning(step)
        if self._options.condensation and self._options.weights_at(step):
            geometry.enqueue(beginning.pending, self._layers, None, {}, step, self._warn, condensation=True)
        return beginning

    def _probed(self, step: int) -> None:
        """The probe of ``step`` ran: enqueue its labelled read-backs and keep its similarity rows."""
        beginning = self._beginning
        try:
            if self._probe_labels is not None:
                geometry.enqueue(
                    beginning.pending, self._layers, self._probe_labels, self._capturer.example_indices,
                    step, self._warn, linear_probes=self._options.linear_probes,
                )  # fmt: skip
            if self._options.similarity:
                beginning.kept = kept_examples(self._layers)
        except Exception as error:  # a monitor never stops training
            self._warn("*", "probe", f"the probe's class geometry, probes or similarity failed: {error!r}")

    def _hold(self, step: int, begun: Finished) -> None:
        kept = self._beginning.kept
        similarity = self.extras.similarity(step, kept, time.time()) if kept else []
        self._held = Held(step, begun, similarity)

    def _take_held(self, step: int | None) -> Held:
        """What was measured when ``step`` began (an empty record if nothing was)."""
        held, self._held = self._held, None
        if step is None or held is None or held.step != step:
            return Held(-1)
        return held

    def _log(
        self, step: int, rows: list[dict], finished: tuple[Finished, Finished], similarity: list[dict],
        loss: Any, now: float,
    ) -> None:  # fmt: skip
        """Write the rows of the sampled step that ended; feed the sinks and the detectors."""
        trained, probed = finished
        classes = [_stamped(row, step, now, TRAIN) for row in trained.classes]
        classes += [_stamped(row, step, now, PROBE) for row in probed.classes]
        if classes:
            self._writer.append_classes(classes)
        if not rows:
            return
        loss = loss_value(loss, self._warn)  # read after the measurement's transfer: no extra GPU stall
        rows = [
            row | {"loss": loss, "wall_time": now} | trained.cells(row["layer"], row["space"])
            | probed.cells(row["layer"], row["space"])
            for row in rows
        ]  # fmt: skip
        self._writer.append(rows)
        if similarity:
            self._writer.append_similarity([row | {"wall_time": now} for row in similarity])
        self._sinks.write(step, rows)
        self._emitter.emit(self._detectors.feed(rows))


def _stamped(row: dict[str, Any], step: int, now: float, source: str) -> dict[str, Any]:
    return row | {"step": step, "wall_time": now, "source": source}
