"""every= as a schedule: exact sampled steps, no hook elsewhere, clear errors, uneven step axes."""

from __future__ import annotations

import pytest
import torch

import ndtracker
from ndtracker import Tracker
from ndtracker.detect import Jump
from ndtracker.tracking import Schedule
from ndtracker.tracking.events import SeriesDetectors, StepAxis
from ndtracker.tracking.schedule import check_schedule
from training_helpers import hook_count, mlp

SCHEDULE = [(0, 1), (5, 3), (12, 4)]
SAMPLED = [0, 1, 2, 3, 4, 6, 9, 12, 16]  # of steps 0..19


def test_schedule_samples_exactly_these_steps():
    schedule = check_schedule("every", SCHEDULE)
    assert [t for t in range(20) if schedule.is_sampled(t)] == SAMPLED
    assert [schedule.next_sampled(t) for t in (4, 5, 7, 10, 11, 12, 13)] == [4, 6, 9, 12, 12, 12, 16]
    assert check_schedule("every", 5) == Schedule(((0, 5),))
    assert check_schedule("every", [(0, 1), (100, 5)]).next_sampled(101) == 105


@pytest.mark.parametrize("hooks", ["sampled", "permanent"])
def test_tracker_samples_the_schedule_and_hooks_nothing_else(tmp_path, hooks):
    model = mlp()
    armed_at, hooked_at = [], []
    with Tracker(model, every=SCHEDULE, log_dir=str(tmp_path), hooks=hooks, detect=False) as tracker:
        for t in range(20):
            hooked_at.append(hook_count(model) > 0)
            armed_at.append(tracker._capturer.armed)
            model(torch.randn(4, 12)).sum().backward()
            tracker.step()
    df = ndtracker.load(tmp_path)
    for space in ("activation", "weight"):
        assert sorted(df[df.space == space].step.unique()) == SAMPLED
    assert [t for t, armed in enumerate(armed_at) if armed] == SAMPLED
    if hooks == "sampled":
        assert [t for t, hooked in enumerate(hooked_at) if hooked] == SAMPLED
    assert hook_count(model) == 0


def test_non_sampled_steps_never_run_a_hook(tmp_path):
    model = mlp()
    calls = []
    with Tracker(model, every=[(0, 2), (6, 5)], log_dir=str(tmp_path), hooks="permanent", detect=False) as tracker:
        hook = tracker._capturer.on_forward
        tracker._capturer.on_forward = lambda *args: calls.append(tracker.current_step) or hook(*args)
        for _ in range(16):
            model(torch.randn(4, 12)).sum().backward()
            tracker.step()
    assert sorted(set(calls)) == [0, 2, 4, 10, 15]


def test_weight_every_with_a_schedule(tmp_path):
    model = mlp()
    with Tracker(model, every=[(0, 1), (6, 2)], weight_every=4, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(13):
            model(torch.randn(4, 12)).sum().backward()
            tracker.step()
    df = ndtracker.load(tmp_path)
    assert sorted(df[df.space == "weight"].step.unique()) == [0, 4, 8, 12]
    assert sorted(df[df.space == "activation"].step.unique()) == [0, 1, 2, 3, 4, 5, 6, 8, 10, 12]


def test_start_step_resumes_inside_a_schedule(tmp_path):
    model = mlp()
    with Tracker(model, every=SCHEDULE, start_step=7, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(10):
            model(torch.randn(4, 12)).sum().backward()
            tracker.step()
    assert sorted(ndtracker.load(tmp_path).step.unique()) == [9, 12, 16]


def test_run_json_records_the_schedule(tmp_path):
    with Tracker(mlp(), every=[(0, 1), (100, 5)], log_dir=str(tmp_path / "a"), detect=False):
        pass
    with Tracker(mlp(), every=5, log_dir=str(tmp_path / "b"), detect=False):
        pass
    options = ndtracker.store.read_run_info(tmp_path / "a")[-1]["options"]
    assert options["every"] == [[0, 1], [100, 5]] and options["weight_every"] is None
    options = ndtracker.store.read_run_info(tmp_path / "b")[-1]["options"]
    assert options["every"] == 5 and options["weight_every"] == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every=[]), r"the first pair starting at step 0; got \[\]"),
        (dict(every=[(1, 5)]), "the first pair starting at step 0"),
        (dict(every=[(0, 1), (10, 5), (10, 2)]), "the starts of .* must increase strictly"),
        (dict(every=[(0, 1), (10, 0)]), r"\(10, 0\) needs a start >= 0 and an every >= 1"),
        (dict(every=[(0, 1.5)]), r"\(0, 1.5\) needs a start >= 0 and an every >= 1, both ints"),
        (dict(every=[(0, 1, 2)]), r"\(0, 1, 2\) is not a \(start, every\) pair"),
        (dict(every=[0, 1]), "0 is not a \\(start, every\\) pair"),
        (dict(every="5"), "every must be a positive integer, got '5' \\(or a schedule"),
        (dict(every=[(0, 2), (10, 5)], weight_every=5), r"weight_every must be a multiple of each interval of every=\[\[0, 2\], \[10, 5\]\], got 5"),
    ],
)
def test_invalid_schedules_raise_clear_errors(tmp_path, kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match):
        Tracker(model, log_dir=str(tmp_path), **kwargs)
    assert hook_count(model) == 0


def test_step_axis_maps_uneven_samples_to_their_steps():
    axis = StepAxis()
    for step in SAMPLED + [20, 24, 30]:
        axis.append(step)
    assert [axis[i] for i in range(len(SAMPLED) + 3)] == SAMPLED + [20, 24, 30]


def test_detectors_get_each_sample_s_step_where_they_take_it_and_events_report_steps():
    seen = []

    class WithSteps:
        def __init__(self, **options) -> None:
            pass

        def update(self, value, step=None):
            seen.append(step)
            return [Jump(index=len(seen) - 1, direction=-1, size=-1.0, z=9.0, before=4.0)] if len(seen) == 7 else []

    class IndexOnly(WithSteps):
        def update(self, value):
            return WithSteps.update(self, value)

    for factory in (WithSteps, IndexOnly):
        seen.clear()
        detectors = SeriesDetectors(factory, warn=lambda *args: None)
        events = []
        for step in SAMPLED:
            events += detectors.feed([{"layer": "a", "space": "activation", "step": step, "stable_rank": 1.0}])
        assert [(e["step"], e["relative_size"]) for e in events] == [(9, -0.25)]
        assert seen == (SAMPLED if factory is WithSteps else [None] * len(SAMPLED))
