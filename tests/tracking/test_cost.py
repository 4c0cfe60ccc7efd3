"""The overhead meter: the loop's wall time of touched steps against untouched ones (exact on
synthetic clocks), and the one warning a slow sampling gets."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import spectra
from ndtracker.tracking.cost import CHECK_EVERY, MIN_SAMPLES, WARMUP, WARN_MS, WARN_SHARE, OverheadMeter


def drive(meter: OverheadMeter, every: int, samples: int, step: float, weights: float, activations: float) -> None:
    """Ticks of a loop sampled every ``every`` steps: an untouched step lasts ``step`` seconds, the
    interval after the weights' call ``step + weights``, the one after the activations' call
    ``step + activations``."""
    now = 0.0
    for t in range(every * samples + 2):  # the last tick closes the last sample's interval
        sampled_next, ended = (t + 1) % every == 0, t % every == 0
        meter.tick(now, sampled_next or ended, sampled_next)
        now += step + (weights if sampled_next else 0.0) + (activations if ended else 0.0)


def drive_samples(meter: OverheadMeter, samples: int, seconds) -> None:
    """Ticks of a loop sampled every 5 steps whose step ``t`` lasts ``seconds(sampled_next, ended,
    samples)``: whether the next step is sampled, whether this one was, samples so far."""
    now, count = 0.0, 0
    for t in range(5 * samples + 2):
        sampled_next, ended = (t + 1) % 5 == 0, t % 5 == 0
        meter.tick(now, sampled_next or ended, sampled_next)
        count += ended
        now += seconds(sampled_next, ended, count)


def test_the_share_is_the_touched_steps_extra_time_over_the_loop_without_it():
    meter = OverheadMeter()
    drive(meter, every=5, samples=20, step=0.004, weights=0.003, activations=0.005)
    found = meter.overhead()
    assert found is not None
    assert found.step_ms == pytest.approx(4.0)
    assert found.per_sample_ms == pytest.approx(8.0)
    assert found.share == pytest.approx(8.0 / (5 * 4.0), rel=0.05)  # the window starts after the warm-up


def test_the_step_after_a_sample_counts_and_the_baseline_is_the_steps_apart():
    """The first step after a sample's work refills the caches it evicted (1 ms here): that is
    the sample's cost, and the bare step is read from the steps apart from samples."""
    meter = OverheadMeter()
    now = 0.0
    for t in range(5 * 30 + 2):
        sampled_next, ended = (t + 1) % 5 == 0, t % 5 == 0
        meter.tick(now, sampled_next or ended, sampled_next)
        refill = 0.001 if t % 5 == 1 else 0.0
        now += 0.004 + refill + (0.002 if sampled_next else 0.0) + (0.003 if ended else 0.0)
    found = meter.overhead()
    assert found.step_ms == pytest.approx(4.0) and found.per_sample_ms == pytest.approx(6.0)


def test_the_first_samples_are_left_out():
    """A cold first sample (a deep first Lanczos run) does not count."""
    meter = OverheadMeter()
    now = 0.0
    for t in range(5 * 20 + 1):
        sampled_next, ended = (t + 1) % 5 == 0, t % 5 == 0
        meter.tick(now, sampled_next or ended, sampled_next)
        now += 0.004 + (10.0 if t == 4 else 0.0)  # the weights of the first sample: 10 s
    assert meter.overhead().share == pytest.approx(0.0)


def test_no_figure_without_enough_samples_or_untouched_steps():
    short = OverheadMeter()
    drive(short, every=5, samples=WARMUP + MIN_SAMPLES - 1, step=0.004, weights=0.003, activations=0.005)
    assert short.overhead() is None
    every_other = OverheadMeter()
    drive(every_other, every=2, samples=100, step=0.004, weights=0.003, activations=0.005)
    assert every_other.overhead() is None  # every step is touched: nothing to compare with


def test_samples_that_cost_more_by_design_count():
    """Every fourth sample costs 9 ms more (the detector's check): the mean counts it."""
    meter = OverheadMeter()
    drive_samples(meter, 41, lambda sampled_next, ended, samples: 0.004 + (0.002 if sampled_next else 0.0)
                  + (0.001 + (0.009 if samples % 4 == 0 else 0.0) if ended else 0.0))  # fmt: skip
    assert meter.overhead().per_sample_ms == pytest.approx(3.0 + 9.0 / 4, rel=0.05)


def test_check_reports_a_high_share_once_and_a_low_one_never():
    cheap = OverheadMeter()
    drive(cheap, every=5, samples=30, step=0.010, weights=0.001, activations=0.002)
    assert cheap.overhead().share < WARN_SHARE and cheap.check() is None
    fast = OverheadMeter()  # a tiny model: twice as slow, but 3 ms per sample
    drive(fast, every=5, samples=30, step=0.001, weights=0.0015, activations=0.0015)
    assert fast.overhead().share > WARN_SHARE and fast.overhead().per_sample_ms < WARN_MS
    assert fast.check() is None
    costly = OverheadMeter()
    drive(costly, every=5, samples=30, step=0.004, weights=0.015, activations=0.015)
    found = costly.check()
    assert found is not None and found.share > WARN_SHARE
    assert costly.check() is None  # once
    assert "every=5" in found.advice(5) and "weight_every" in found.advice(5)


def test_a_stall_in_one_step_is_not_read_as_the_trackers_cost():
    """An evaluation pass or a checkpoint that lands on a sampled step adds to that sample only:
    the mean over samples leaves that stall out."""
    meter = OverheadMeter()
    now = 0.0
    for t in range(5 * 30 + 2):
        sampled_next, ended = (t + 1) % 5 == 0, t % 5 == 0
        meter.tick(now, sampled_next or ended, sampled_next)
        now += 0.010 + (0.001 if sampled_next else 0.0) + (0.001 if ended else 0.0)
        now += 5.0 if t == 5 * 20 else 0.0  # a 5-second stall after a sample's measurement
    found = meter.overhead()
    assert found.per_sample_ms == pytest.approx(2.0) and meter.check() is None


@pytest.mark.parametrize("every_samples", [10, 5])
def test_a_periodic_evaluation_on_sampled_steps_is_not_read_as_the_trackers_cost(every_samples):
    """A 2-second evaluation every 50 (25) steps, run after tracker.step() at a sampled step of a
    loop sampled every 5 steps: one sample in ten (five) carries it. The tracker's own cost (2 ms
    per sample on a 50 ms step, plus 9 ms at every fourth sample: the detector) is what is read,
    and nothing is warned about."""
    def step(sampled_next: bool, ended: bool, samples: int) -> float:
        seconds = 0.050 + (0.001 if sampled_next else 0.0) + (0.001 if ended else 0.0)
        seconds += 0.009 if ended and samples % 4 == 0 else 0.0
        return seconds + (2.0 if ended and samples % every_samples == 0 else 0.0)  # the evaluation

    meter = OverheadMeter()
    drive_samples(meter, 60, step)
    found = meter.overhead()
    assert found.per_sample_ms == pytest.approx(2.0 + 9.0 / 4, rel=0.15)
    assert found.share < 0.05 and meter.check() is None


def test_stalls_on_most_samples_are_the_trackers_cost_as_far_as_the_clock_can_tell():
    meter = OverheadMeter()
    drive(meter, every=5, samples=30, step=0.004, weights=0.0, activations=0.5)
    assert meter.overhead().per_sample_ms == pytest.approx(500.0)


def test_a_slow_sampling_is_warned_about_once_with_what_to_change(tmp_path, monkeypatch):
    measure_many = spectra.measure_many

    def slow(jobs):
        time.sleep(0.05)  # each sample's two batches: 100 ms against steps of about a millisecond
        return measure_many(jobs)

    monkeypatch.setattr(spectra, "measure_many", slow)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ndtracker.Tracker(model, every=5, log_dir=tmp_path, detect=False) as tracker:
            for _ in range(5 * (WARMUP + MIN_SAMPLES + CHECK_EVERY + 2)):  # checked every CHECK_EVERY samples
                model(torch.randn(4, 8)).sum().backward()
                tracker.step()
            overhead = tracker.overhead
    messages = [str(w.message) for w in caught if "sampling costs" in str(w.message)]
    assert len(messages) == 1 and "max_rows=1024" in messages[0] and "training continues" in messages[0]
    assert overhead is not None and overhead.share > 3 and overhead.per_sample_ms > 90
