"""A smooth trend at either end of a series is a trend, not a jump (the clipping's median must not
flatten it), while a true level shift or a spike near an end is still handled."""

from __future__ import annotations

import numpy as np
import pytest

from ndtracker.detect import OnlineDetector, find_jumps, phases_and_jumps
from ndtracker.detect._robust import _clipped, _running_median


def decay(n: int, tau: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1.0 + 9.0 * np.exp(-np.arange(n) / tau) + rng.normal(0.0, noise, n)


@pytest.mark.parametrize("tau", [3.0, 5.0, 10.0, 20.0, 50.0])
@pytest.mark.parametrize("n", [40, 400])
def test_an_exponential_collapse_at_the_start_has_no_jump(tau, n):
    for seed in range(5):
        for noise in (0.0, 0.01, 0.05):
            y = decay(n, tau, noise, seed)
            assert find_jumps(y) == [], (tau, n, seed, noise)


@pytest.mark.parametrize("tau", [5.0, 20.0])
def test_a_trend_at_the_end_has_no_jump(tau):
    y = decay(200, tau, 0.01, 0)[::-1].copy()  # a rise that steepens up to the last sample
    assert find_jumps(y) == []


def test_the_clipping_median_follows_a_monotone_trend_to_both_ends():
    y = 1.0 + 9.0 * np.exp(-np.arange(60) / 10.0)
    for half in (2, 8):
        np.testing.assert_allclose(_running_median(y, half), y)
        np.testing.assert_allclose(_clipped(y, 1, half), y)


def test_a_spike_at_the_first_sample_is_still_clipped():
    y = np.r_[50.0, np.full(59, 1.0)] + np.random.default_rng(0).normal(0, 0.01, 60)
    assert _clipped(y, 1, 8)[0] < 1.2
    assert find_jumps(y) == []


@pytest.mark.parametrize("at", [3, 4, 5, 6, 7])
def test_a_level_shift_in_the_first_samples_is_still_a_jump(at):
    y = np.r_[np.full(at, 10.0), np.full(60 - at, 5.0)] + np.random.default_rng(at).normal(0, 0.05, 60)
    jumps = find_jumps(y)
    assert [(j.index, j.direction) for j in jumps] == [(at, -1)]


def test_the_report_of_a_fast_collapse_lists_a_collapse_and_no_jump():
    y = decay(40, 5.0, 0.01, 0)
    phases, jumps = phases_and_jumps(y)
    assert jumps == [] and phases[0].kind == "collapse"


def test_the_online_detector_reports_no_jump_while_a_collapse_unfolds():
    detector = OnlineDetector()
    events = [event for value in decay(300, 20.0, 0.01, 0) for event in detector.update(float(value))]
    from ndtracker.detect import Jump

    assert not [e for e in events if isinstance(e, Jump)]
