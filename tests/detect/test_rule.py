"""Tests of the labelling rule, events at the start, relevance, uneven steps and the smoothed level
(issue 10), on synthetic series with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from ndtracker.detect import find_jumps, label_phases, phases_and_jumps, smooth_level
from rule_levels import end_index, start_index


def noisy(clean: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    return clean + np.random.default_rng(seed).normal(0, sd, clean.size)


@pytest.mark.parametrize("seed", range(3))
def test_collapse_in_the_first_samples_is_a_phase(seed: int) -> None:
    x = noisy(np.r_[np.full(4, 10.0), np.linspace(10, 4, 5), np.full(600, 4.0)], 0.1, seed)
    phases = label_phases(x)
    assert phases[0].kind == "collapse" and phases[0].start == 0 and phases[0].stop <= 16
    assert phases[0].relative_change <= -0.4
    for n in (40, 100, 300):  # the label of the first steps does not depend on the run's length
        first = label_phases(x[:n])[0]
        assert first.kind == "collapse" and first.start == 0 and abs(first.stop - phases[0].stop) <= 3


@pytest.mark.parametrize("seed", range(3))
def test_collapse_in_the_first_samples_starts_a_collapse_phase(seed: int) -> None:
    x = noisy(np.r_[np.full(4, 10.0), np.linspace(10, 4, 5), np.full(600, 4.0)], 0.1, seed)
    for n in (40, 100, 300, 609):
        first = label_phases(x[:n])[0]
        assert first.kind == "collapse" and first.start == 0 and first.relative_change <= -0.5


def test_level_shift_in_the_first_samples_is_a_jump() -> None:
    x = noisy(np.r_[np.full(5, 20.0), np.full(400, 12.0)], 0.3)
    jumps = find_jumps(x)
    assert [(j.index, j.direction) for j in jumps] == [(5, -1)]
    assert jumps[0].relative_size == pytest.approx(-0.4, abs=0.05)


def test_smooth_monotone_curve_is_a_trend_not_jumps() -> None:
    i = np.arange(1600.0)
    x = 17 + 113 * np.exp(-i / 150) + 1e-6 * np.random.default_rng(0).normal(size=i.size)
    assert find_jumps(x) == []
    phases = label_phases(x)
    assert phases[0].kind == "collapse" and phases[0].relative_change < -0.8


def test_small_jumps_are_not_reported() -> None:
    x = noisy(np.r_[np.full(500, 1000.0), np.full(500, 1005.0)], 0.2)  # 0.5 %, 25 noise sd
    assert find_jumps(x) == []
    assert [j.index for j in find_jumps(x, min_relative_size=0)] == [500]


def test_no_trend_contains_a_jump_against_it() -> None:
    x = noisy(np.r_[np.linspace(100, 60, 400), np.linspace(66, 40, 400), np.full(400, 40.0)], 0.5)
    phases, jumps = phases_and_jumps(x)
    assert [j.index for j in jumps if j.direction > 0] == [400]
    for p in phases:
        if p.kind == "collapse":
            assert not any(p.start < j.index < p.stop and j.direction > 0 for j in jumps)
    # the jump is the boundary between two collapses; neither takes its change
    assert [p.kind for p in phases] == ["collapse", "collapse", "stabilization"]
    assert phases[0].stop == phases[1].start == 400
    assert phases[0].end_level == pytest.approx(smooth_level(x)[395])  # 4 in from the jump: a whole window


@pytest.mark.parametrize("seed", range(3))
def test_every_phase_obeys_the_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 1, 3000)) + 200 + noisy(np.zeros(3000), 2.0, seed)
    phases, jumps = phases_and_jumps(x)
    level, cuts = smooth_level(x), {j.index for j in jumps}
    for p in phases:
        assert p.start_level == pytest.approx(level[start_index(p.start, p.stop, cuts)])
        end = end_index(p.start, p.stop, x.size, cuts)  # before a jump: the level before it
        assert p.end_level == pytest.approx(level[end])
        assert p.relative_change == pytest.approx((p.end_level - p.start_level) / abs(p.start_level))
        if p.kind == "collapse":
            assert p.relative_change <= -0.05
        if p.kind == "expansion":
            assert p.relative_change >= 0.05


def test_uneven_steps_give_the_same_phases_in_steps() -> None:
    """Dense sampling at the start (every step for 100 steps, then every 5) against every 5."""
    step_axis = np.arange(0, 6000)
    clean = np.interp(step_axis, [0, 30, 60, 2000, 3000, 5999], [10, 10, 4, 4, 8, 8])
    values = noisy(clean, 0.1)
    uneven = np.r_[np.arange(100), np.arange(100, 6000, 5)]
    even = np.arange(0, 6000, 5)
    a = [p for p in label_phases(values[uneven], uneven) if p.kind != "stabilization"]
    b = [p for p in label_phases(values[even], even) if p.kind != "stabilization"]
    assert [p.kind for p in a] == [p.kind for p in b] == ["collapse", "expansion"]
    for p, q in zip(a, b):
        # 35 steps: a trend starting within the level's rounding (8 samples, 40 steps at every 5) of
        # the series' start starts at 0
        assert abs(p.start_step - q.start_step) <= 35 and abs(p.end_step - q.end_step) <= 60


def test_steps_are_checked() -> None:
    with pytest.raises(ValueError, match=r"steps must have shape \(3,\) like values, got \(2,\)"):
        label_phases([1.0, 2.0, 3.0], [0, 5])
    with pytest.raises(ValueError, match="steps must be finite and strictly increasing"):
        find_jumps([1.0, 2.0, 3.0], [0, 5, 5])


def test_smooth_level_follows_the_series_and_keeps_nans() -> None:
    x = noisy(np.r_[np.full(300, 5.0), np.full(300, 9.0)], 0.2)
    x[[10, 400]] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped 2 non-finite"):
        level = smooth_level(x)
    assert np.isnan(level[[10, 400]]).all()
    assert np.nanmax(np.abs(level[:290] - 5.0)) < 0.3 and np.nanmax(np.abs(level[310:] - 9.0)) < 0.3
    assert abs(level[299] - 5.0) < 0.3 and abs(level[300] - 9.0) < 0.3  # the jump stays sharp


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("where", [37, 100, 250, 411])
def test_a_jump_between_flat_stretches_is_a_boundary_not_a_trend(seed: int, where: int) -> None:
    """Flat, a jump of 50 % (up or down), flat: two stabilizations meeting at the jump, each
    measured on its own side of it (no trend squeezed against the jump takes its change)."""
    up = seed % 2 == 0
    clean = np.r_[np.full(where, 8.0), np.full(500 - where, 12.0 if up else 4.0)]
    x = noisy(clean, 0.05 + 0.03 * seed, seed)
    phases, jumps = phases_and_jumps(x)
    assert [j.index for j in jumps] == [where]
    assert [(p.kind, p.start, p.stop) for p in phases] == [("stabilization", 0, where), ("stabilization", where, 500)]
    assert phases[0].end_level == pytest.approx(8.0, abs=5 * (0.05 + 0.03 * seed))  # one sample's level


def test_the_report_fixture_jump_is_a_boundary() -> None:
    """The report fixture's layer: flat 8 until step 500, then flat 12 (sampled every 5 steps)."""
    steps = np.arange(0, 1000, 5)
    x = np.where(steps >= 500, 12.0, 8.0) + 0.05 * np.random.RandomState(9 * 7 + 10).randn(steps.size)
    phases = label_phases(x, steps)
    assert [(p.kind, p.start_step, p.end_step) for p in phases] == [("stabilization", 0, 495), ("stabilization", 500, 995)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", ["collapse", "expansion", "slow"])
def test_trend_ends_do_not_move_when_the_plateau_after_goes_on(seed: int, shape: str) -> None:
    """A trend then a long noisy plateau: doubling (and quadrupling, octupling) the plateau moves
    the trend's end by at most the level's rounding of a kink (8 samples), or 1 noise sd of the
    level's pace on a slow trend (where the end was wherever the plateau's noise was deepest)."""
    start, level = {"collapse": (60, 20.0), "expansion": (60, 40.0), "slow": (300, 40.0)}[shape]
    clean = np.r_[np.full(100, 30.0), np.linspace(30, level, start), np.full(8000, level)]
    x = noisy(clean, 0.5, seed)
    ends = []
    for n in (1000, 2000, 4000, 8000):
        trend = [p for p in label_phases(x[:n]) if p.kind != "stabilization"]
        assert len(trend) == 1, [(p.kind, p.start, p.stop) for p in label_phases(x[:n])]
        ends.append(trend[0].stop)
    assert max(ends) - min(ends) <= (8 if shape != "slow" else 20), ends
    assert abs(ends[0] - (100 + start)) <= 0.1 * start + 8, ends


@pytest.mark.parametrize("values", [np.zeros(20), np.full(40, 3.0), np.r_[np.zeros(3), np.ones(30)]])
def test_constant_and_noiseless_series_never_raise(values):
    phases, jumps = phases_and_jumps(values)
    assert phases and sum(p.stop - p.start for p in phases) == values.size
    assert all(np.isfinite(j.size) for j in jumps)


def trajectory(variant: str, n: int, seed: int) -> np.ndarray:
    """The benchmark's piecewise trajectories (``benchmarks/detector.py``), Gaussian noise sd 1."""
    knots, levels = {
        "seed": ([0, 0.1, 0.5, 1], [100, 30, 45, 45]),
        "late-collapse": ([0, 0.1, 0.5, 0.75, 0.85, 1], [100, 30, 45, 45, 25, 25]),
        "expand-first": ([0, 0.3, 0.7, 0.9, 1], [20, 60, 60, 35, 35]),
    }[variant]
    return noisy(np.interp(np.arange(n), np.array(knots) * (n - 1), levels), 1.0, seed)


@pytest.mark.parametrize("variant", ["seed", "late-collapse", "expand-first"])
@pytest.mark.parametrize("n", [200, 1000, 5000])
def test_every_stabilization_stays_within_the_minimum_change(variant: str, n: int) -> None:
    """On the benchmark's trajectories (noise 1 on levels 20-100) every stabilization's net change
    is below 5 % of its start level, also the last one (its end level measured 4 samples in from
    the end, where the level has a whole window, not at one noisy sample) and those beside a jump."""
    for seed in range(5):
        x = trajectory(variant, n, seed)
        phases, jumps = phases_and_jumps(x)
        for p in phases:
            if p.kind == "stabilization":
                assert abs(p.relative_change) < 0.05, (seed, p)
            else:
                assert abs(p.relative_change) >= 0.05


def test_a_stabilization_beyond_the_minimum_change_is_within_its_noise() -> None:
    """Where the level is too noisy to measure a 5 % move (a random walk in noise of sd 2 on a
    level about 200), a stabilization may move more, but by less than 4 noise sd of the difference."""
    from ndtracker.detect.level import _level_of_finite

    beyond = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x = np.cumsum(rng.normal(0, 1, 3000)) + 200 + noisy(np.zeros(3000), 8.0, seed)
        phases, jumps = phases_and_jumps(x)
        sd, cuts = _level_of_finite(x, [j.index for j in jumps]).sd, {j.index for j in jumps}
        for p in phases:
            if p.kind == "stabilization" and abs(p.relative_change) >= 0.05:
                noise = float(np.hypot(sd[start_index(p.start, p.stop, cuts)], sd[end_index(p.start, p.stop, x.size, cuts)]))
                assert noise > 0.05 / 4 * abs(p.start_level) and abs(p.change) < 4 * noise, (p, noise)
                beyond += 1
    assert beyond > 0  # the case arises here
