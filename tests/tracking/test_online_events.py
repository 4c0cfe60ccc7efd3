"""Online means online: events reach the log, the events/ folder and on_event while training runs."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import Tracker, detect
from ndtracker.detect import Jump, PhaseChange
from ndtracker.tracking import OnlineEvent
from ndtracker.tracking.events import BASE_STRIDE, EventEmitter, _accepts
from training_helpers import mlp


def tracker_lags() -> tuple[int, int]:
    """The most samples the Tracker's detector reports a jump and a phase change after they start
    (the detector's own figures; an older detector reports one ``lag`` for both)."""
    factory = detect.OnlineDetector
    detector = factory(stride=BASE_STRIDE) if _accepts(factory, "stride") else factory()
    return getattr(detector, "jump_lag", detector.lag), getattr(detector, "phase_lag", detector.lag)


def squeezed_run(tmp_path, squeeze, steps, stop):
    """An identity layer on random batches, sampled on an uneven schedule (every 2 steps from 200);
    ``squeeze(t, weight)`` changes the weights before step ``t``'s forward. Runs until
    ``stop(received)``; returns the tracker (open) and ``(step() call's sample, event)`` pairs."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(16))
    model = nn.Sequential(layer)
    received: list[tuple[int, OnlineEvent]] = []
    g = torch.Generator().manual_seed(0)
    tracker = Tracker(model, every=[(0, 1), (200, 2)], spaces="activation", log_dir=str(tmp_path),
                      on_event=lambda event: received.append((tracker.current_step - 1, event)))  # fmt: skip
    for t in range(steps):
        with torch.no_grad():
            squeeze(t, layer.weight)
        model(torch.randn(128, 16, generator=g)).sum().backward()
        tracker.step()
        if stop(received):
            break
    return tracker, received


def test_an_abrupt_rank_loss_reaches_on_event_as_a_jump_during_training(tmp_path):
    """Most of a layer's output rank lost at step 300: the jump arrives from ``step()`` within the
    detector's jump lag, placed at step 300, and is in ``events/`` after a flush, before close."""
    collapse, (jump_lag, _) = 300, tracker_lags()

    def squeeze(t, weight):
        if t == collapse:
            weight[4:] *= 0.02

    def jumps(received):
        return [(at, e) for at, e in received if e.kind == "jump" and e.direction < 0]

    tracker, received = squeezed_run(tmp_path, squeeze, collapse + 2 * (jump_lag + 10), lambda r: jumps(r))
    assert jumps(received), f"no jump within {jump_lag} samples of step {collapse}"
    at, jump = jumps(received)[0]
    assert (jump.step, jump.layer, jump.space, jump.metric, jump.direction) == (collapse, "0", "activation", "stable_rank", -1)
    assert collapse <= at <= collapse + 2 * jump_lag  # found while training ran, not at close()
    assert jump.relative_size < -0.5 and jump.size < 0
    tracker.flush()  # written to events/ with the next flush, before close
    events = ndtracker.load(tmp_path, events=True)
    assert ("jump", collapse) in set(zip(events.kind, events.step))
    tracker.close()


def test_a_gradual_rank_loss_reaches_on_event_as_a_collapse_during_training(tmp_path, caplog):
    """The same layer losing rank over 60 steps from step 300: the collapse phase arrives from
    ``step()`` within the detector's phase lag of its start, and is logged at WARNING."""
    start, (_, phase_lag) = 300, tracker_lags()

    def squeeze(t, weight):
        if start <= t < start + 60:
            weight[4:] *= 0.93

    def collapses(received):
        return [(at, e) for at, e in received if e.kind == "phase" and e.phase == "collapse"]

    with caplog.at_level(logging.INFO, logger="ndtracker"):
        tracker, received = squeezed_run(tmp_path, squeeze, start + 2 * (phase_lag + 40), collapses)
    assert collapses(received), f"no collapse within {phase_lag} samples of step {start}"
    at, phase = collapses(received)[0]
    assert abs(phase.step - start) <= 10 and phase.direction is None and phase.size is None
    # reported by the step() call of the sample that settles it (the detector's lag, none added)
    assert phase.step < at <= phase.step + 2 * (phase_lag + 4)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "ndtracker"]
    assert warned == [f"stable_rank enters collapse at 0 (activation) step {phase.step}"]
    tracker.flush()
    events = ndtracker.load(tmp_path, events=True)
    assert ("phase", phase.step) in set(zip(events.kind, events.step))
    tracker.close()


class Scripted:
    """A stand-in detector: a jump (index 1) at the 3rd value, a collapse phase (index ``phase_at``)
    at the 5th."""

    phase_at = 2

    def __init__(self, **options) -> None:
        self.count = 0

    def update(self, value, step=None):
        self.count += 1
        if self.count == 3:
            return [Jump(index=1, direction=-1, size=-2.0, z=12.0, before=8.0, after=6.0)]
        if self.count == 5:
            return [PhaseChange(index=self.phase_at, kind="collapse", previous="stabilization")]
        return []

    def finish(self):
        return [PhaseChange(index=4, kind="stabilization", previous="collapse")]


def scripted_run(tmp_path, monkeypatch, on_event, steps=6, every=2, box=None):
    """Train under a Tracker whose detector is :class:`Scripted`; ``box`` receives the tracker."""
    monkeypatch.setattr(detect, "OnlineDetector", Scripted)
    model = mlp()
    tracker = Tracker(model, every=every, layers="2", spaces="activation", log_dir=str(tmp_path), on_event=on_event)
    if box is not None:
        box.append(tracker)
    for _ in range(steps * every):
        model(torch.randn(4, 12)).sum().backward()
        tracker.step()
    return tracker


def test_events_are_typed_records_placed_at_their_steps(tmp_path, monkeypatch):
    received, box = [], []
    tracker = scripted_run(tmp_path, monkeypatch, lambda event: received.append((box[0].current_step, event)), box=box)
    assert [(at, e.kind, e.step) for at, e in received] == [(5, "jump", 2), (9, "phase", 4)]
    jump, phase = received[0][1], received[1][1]
    assert jump == OnlineEvent(step=2, layer="2", space="activation", metric="stable_rank", kind="jump",
                               direction=-1, size=-2.0, relative_size=-0.25, phase=None, z=12.0)  # fmt: skip
    assert (phase.phase, phase.direction, phase.size) == ("collapse", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        jump.step = 3  # type: ignore[misc]
    tracker.close()
    assert [e.phase for _, e in received[2:]] == ["stabilization"]  # held back until close()


def test_a_collapse_is_logged_at_warning_and_other_events_at_info(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="ndtracker"):
        scripted_run(tmp_path, monkeypatch, None).close()
    levels = {record.getMessage(): record.levelno for record in caplog.records if record.name == "ndtracker"}
    assert levels == {
        "jump down in stable_rank at 2 (activation) step 2: size -2 (-25%)": logging.INFO,
        "stable_rank enters collapse at 2 (activation) step 4": logging.WARNING,
        "stable_rank enters stabilization at 2 (activation) step 8": logging.INFO,
    }


def test_events_are_written_as_training_runs(tmp_path, monkeypatch):
    tracker = scripted_run(tmp_path, monkeypatch, None)
    tracker.flush()
    events = ndtracker.load(tmp_path, events=True)
    assert list(zip(events.kind, events.step)) == [("jump", 2), ("phase", 4)]
    tracker.close()


def test_a_jump_and_a_phase_change_at_one_step_are_both_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(Scripted, "phase_at", 1)
    scripted_run(tmp_path, monkeypatch, None).close()
    events = ndtracker.load(tmp_path, events=True)
    assert list(zip(events.kind, events.step)) == [("jump", 2), ("phase", 2), ("phase", 8)]  # 8: at close


def test_an_on_event_that_raises_is_warned_about_once_and_training_goes_on(tmp_path, monkeypatch):
    def broken(event):
        raise KeyError("oops")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = scripted_run(tmp_path, monkeypatch, broken)
        tracker.close()
    messages = [str(w.message) for w in caught if "on_event" in str(w.message)]
    assert messages == ["ndtracker: on_event raised KeyError('oops') (further errors are not reported); training continues"]
    assert len(ndtracker.load(tmp_path)) == 6


def test_on_event_must_be_callable(tmp_path):
    with pytest.raises(TypeError, match="on_event must be a callable taking an OnlineEvent, or None, got 3"):
        Tracker(mlp(), on_event=3, log_dir=str(tmp_path))


class _Written:
    """A writer stand-in that keeps the event rows it is given."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def append_events(self, rows: list[dict]) -> None:
        self.rows += rows


def test_many_series_entering_one_phase_at_one_step_log_one_line(caplog):
    def phase(layer, space="activation", step=45, kind="collapse"):
        return {"step": step, "layer": layer, "space": space, "metric": "stable_rank", "kind": "phase", "phase": kind}

    events = [phase(f"block.{i}", space) for i in range(20) for space in ("activation", "weight")]
    events += [phase("head", step=50), phase("block.0", kind="expansion")]
    writer, received = _Written(), []
    emitter = EventEmitter(writer, received.append, lambda *args: None)
    with caplog.at_level(logging.INFO, logger="ndtracker"):
        emitter.emit(events)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ndtracker"]
    assert lines == [
        (logging.WARNING, "stable_rank enters collapse at step 45 in 40 series: block.0 (activation), "
                          "block.0 (weight), block.1 (activation) and 37 more"),
        (logging.WARNING, "stable_rank enters collapse at head (activation) step 50"),
        (logging.INFO, "stable_rank enters expansion at block.0 (activation) step 45"),
    ]  # fmt: skip
    assert len(writer.rows) == len(received) == 42  # every event is still written and handed over
