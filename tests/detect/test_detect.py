"""Tests of ndtracker.detect: jumps, anomalies and phases (the online detector: test_online.py).

Series are synthetic with known truth and fixed seeds (``synthetic_series.py``); margins are wide
(shifts of 6 to 12 noise sd, nulls at the default threshold of 5 sd), so the tests guard the logic,
not the noise of the numbers. The rates over many seeds are measured in ``benchmarks/detector.py``.
"""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
from synthetic_series import labels_of, null, quiet_jumps, steps, trajectory

from ndtracker import detect
from ndtracker.detect import jumps, online, phases
from ndtracker.detect import OnlineDetector, Phase, find_anomalies, find_jumps, label_phases

# ----------------------------------------------------------------------------- jumps


def test_single_jump_found_once_at_its_index() -> None:
    x = steps(1000, [400], [6.0]) + np.random.default_rng(1).normal(size=1000) + 20
    jumps = find_jumps(x)
    assert len(jumps) == 1
    assert abs(jumps[0].index - 400) <= 2
    assert jumps[0].direction == 1
    assert jumps[0].size == pytest.approx(6.0, abs=1.5)
    assert jumps[0].z >= 5.0
    assert jumps[0].after - jumps[0].before == pytest.approx(jumps[0].size)


def test_noise_free_step_is_one_jump() -> None:
    assert [(j.index, j.direction) for j in find_jumps([10.0] * 100 + [20.0] * 100)] == [(100, 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiple_jumps_each_found_once(seed: int) -> None:
    where, sizes = [300, 500, 750, 1000], [8.0, -6.0, 10.0, -12.0]
    x = steps(1300, where, sizes) + np.random.default_rng(seed).normal(size=1300)
    jumps = find_jumps(x)
    assert len(jumps) == 4
    assert all(abs(j.index - w) <= 2 and j.direction == np.sign(s) for j, w, s in zip(jumps, where, sizes))


@pytest.mark.parametrize("width", [4, 8])
def test_smoothed_jump_found_once_near_its_middle(width: int) -> None:
    x = steps(1000, [500], [-10.0], width) + np.random.default_rng(3).normal(size=1000)
    jumps = find_jumps(x)
    assert len(jumps) == 1
    assert abs(jumps[0].index - (500 + width // 2)) <= 3
    assert jumps[0].direction == -1


@pytest.mark.parametrize(
    "kind", ["gaussian", "ar1", "student-t2", "heteroscedastic", "drift", "exp-decay", "log-growth", "kinks"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_jump_on_null_series(kind: str, seed: int) -> None:
    assert find_jumps(null(kind, seed=seed)) == []


def test_isolated_spikes_are_anomalies_not_jumps() -> None:
    x = np.random.default_rng(4).normal(size=1000) + 10
    x[[200, 201, 600, 850]] += [25.0, 25.0, -30.0, 20.0]
    assert find_jumps(x) == []
    assert find_anomalies(x) == [200, 201, 600, 850]


def test_short_excursion_is_not_a_jump() -> None:
    x = np.random.default_rng(5).normal(size=1000)
    x[500:505] += 20.0  # five samples, then back
    assert find_jumps(x) == []


@pytest.mark.parametrize("scale, offset", [(1e-3, 5.0), (7.5, -300.0), (1e3, 1e4)])
def test_jumps_are_invariant_to_affine_maps(scale: float, offset: float) -> None:
    x = steps(1500, [300, 700, 1100], [6.0, -8.0, 5.0]) + np.random.default_rng(6).normal(size=1500)
    base = find_jumps(x, min_relative_size=0)  # a relative size is not invariant to an offset
    mapped = find_jumps(scale * x + offset, min_relative_size=0)
    flipped = find_jumps(-scale * x + offset, min_relative_size=0)
    assert [j.index for j in mapped] == [j.index for j in flipped] == [j.index for j in base]
    assert [j.direction for j in mapped] == [j.direction for j in base]
    assert [j.direction for j in flipped] == [-j.direction for j in base]
    assert [j.size for j in mapped] == pytest.approx([scale * j.size for j in base])


def test_non_finite_values_are_skipped_and_counted() -> None:
    x = steps(1000, [500], [8.0]) + np.random.default_rng(7).normal(size=1000)
    x[[100, 101, 800]] = [np.nan, np.inf, -np.inf]
    with pytest.warns(RuntimeWarning, match="skipped 3 non-finite value"):
        jumps = find_jumps(x)
    assert [j.index for j in jumps] == [500]


def test_non_finite_run_at_a_jump_is_not_filled_in() -> None:
    x = steps(1000, [500], [8.0]) + np.random.default_rng(8).normal(size=1000)
    x[495:505] = np.nan
    jumps = quiet_jumps(x)
    assert [j.index for j in jumps] == [505]  # the first finite value at the new level


def test_short_and_constant_series_have_no_jump() -> None:
    assert find_jumps([]) == []
    assert find_jumps(np.arange(15.0)) == []  # fewer than 2 * min_window values
    assert find_jumps(np.full(500, 3.0)) == []


def test_min_size_drops_small_jumps() -> None:
    x = steps(1000, [300, 700], [6.0, 12.0]) + np.random.default_rng(9).normal(size=1000)
    assert [j.index for j in find_jumps(x, min_size=9.0)] == [700]


@pytest.mark.parametrize(
    "values, match",
    [
        (np.zeros((3, 4)), r"values must be 1-D, got shape \(3, 4\)"),
        (5.0, r"values must be 1-D, got shape \(\)"),
        (["a", "b"], "values must be a 1-D sequence of numbers"),
    ],
)
def test_bad_values_raise(values: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_jumps(values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        label_phases(values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"z_threshold": 0.5}, r"z_threshold must be a number in \[1.0, 100.0\], got 0.5"),
        ({"min_window": 2}, r"min_window must be an integer in \[4, 4096\], got 2"),
        ({"min_window": 8.0}, r"min_window must be an integer in \[4, 4096\], got 8.0"),
        ({"max_window": 4}, r"max_window must be an integer in \[8, 4096\], got 4"),
        ({"noise_window": 64}, r"noise_window must be an integer in \[128, 1048576\], got 64"),
        ({"min_size": -1.0}, r"min_size must be a number in \[0.0, inf\], got -1.0"),
        ({"z_threshold": True}, r"z_threshold must be a number in \[1.0, 100.0\], got True"),
    ],
)
def test_bad_jump_options_raise(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_jumps(np.zeros(100), **options)
    with pytest.raises(ValueError, match=match):
        OnlineDetector(**options)


def test_all_non_finite_series_has_no_jump_and_says_so() -> None:
    with pytest.warns(RuntimeWarning, match="find_jumps: skipped 50 non-finite value"):
        assert find_jumps([np.nan] * 40 + [np.inf] * 10) == []


def test_anomalies_of_bad_and_degenerate_input() -> None:
    assert find_anomalies([]) == []
    assert find_anomalies([1.0, 50.0, 2.0]) == []  # fewer than five values
    assert find_anomalies(np.full(300, 2.0)) == []  # constant: no scale, no outlier
    x = np.random.default_rng(13).normal(size=500)
    x[[10, 300]], x[200] = np.nan, 30.0
    with pytest.warns(RuntimeWarning, match="find_anomalies: skipped 2 non-finite value"):
        assert find_anomalies(x) == [200]  # a position in the input, NaNs counted
    with pytest.raises(ValueError, match=r"find_anomalies: values must be 1-D, got shape \(2, 3\)"):
        find_anomalies(np.zeros((2, 3)))


def test_constant_series_with_gaps_is_one_stabilization_phase() -> None:
    x = np.full(1000, 4.0)
    x[[0, 500, 999]] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped 3 non-finite"):
        phases = label_phases(x)
    assert [(p.start, p.stop, p.kind, p.change) for p in phases] == [(0, 1000, "stabilization", 0.0)]


# ----------------------------------------------------------------------------- phases


@pytest.mark.parametrize("n", [200, 1000, 5000])
def test_phases_of_the_seed_trajectory(n: int) -> None:
    x, truth = trajectory(n)
    phases = label_phases(x)
    assert [p.kind for p in phases] == ["collapse", "expansion", "stabilization"]
    assert np.mean(labels_of(phases) == truth) >= (0.95 if n >= 1000 else 0.85)  # 200: kinks rounded
    assert phases[0].relative_change < -0.5 and phases[1].relative_change > 0.3
    assert phases[0].slope < 0 < phases[1].slope


@pytest.mark.parametrize("seed", range(4))
def test_phases_cover_the_series_contiguously(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 30000))
    x = np.cumsum(rng.normal(size=n)) + steps(n, [n // 3], [20.0])
    x[rng.random(n) < 0.02] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        phases, jumps = detect.phases_and_jumps(x)
    assert phases[0].start == 0 and phases[-1].stop == n
    # neighbours differ in kind, unless a jump separates them (phases are not merged across jumps)
    at_jump = {j.index for j in jumps}
    assert all(a.stop == b.start and (a.kind != b.kind or b.start in at_jump) for a, b in zip(phases, phases[1:]))
    assert all(p.stop > p.start for p in phases)


@pytest.mark.parametrize("kind", ["gaussian", "ar1", "student-t2"])
@pytest.mark.parametrize("n", [300, 5000])
def test_flat_noisy_series_is_one_stabilization_phase(kind: str, n: int) -> None:
    assert [(p.start, p.stop, p.kind) for p in label_phases(null(kind, n))] == [(0, n, "stabilization")]


def test_smooth_low_noise_curve_is_not_fragmented() -> None:
    i = np.arange(20000)
    x = 20 + 80 * np.exp(-i / 2500) + 1e-4 * np.random.default_rng(0).normal(size=i.size)
    assert [p.kind for p in label_phases(x)] == ["collapse", "stabilization"]


def test_slow_clear_trend_counts() -> None:
    x = np.r_[np.full(1000, 50.0), np.linspace(50, 60, 600), np.full(1000, 60.0)]
    x = x + np.random.default_rng(1).normal(0, 1.0, x.size)
    phases = label_phases(x)
    assert [p.kind for p in phases] == ["stabilization", "expansion", "stabilization"]
    assert abs(phases[1].start - 1000) <= 60 and abs(phases[1].stop - 1600) <= 60


def test_small_relative_change_is_stabilization() -> None:
    x = np.linspace(1000, 1010, 3000) + np.random.default_rng(2).normal(0, 0.1, 3000)  # 1 % change
    assert [p.kind for p in label_phases(x)] == ["stabilization"]
    assert [p.kind for p in label_phases(x, min_change=0.005)] == ["expansion"]


def test_phases_of_short_constant_and_empty_series() -> None:
    assert label_phases([]) == []
    assert label_phases([1.0, 2.0, 3.0]) == [Phase(0, 3, "stabilization")]
    assert [(p.start, p.stop, p.kind) for p in label_phases(np.full(400, 7.0))] == [(0, 400, "stabilization")]
    with pytest.warns(RuntimeWarning, match="skipped 10 non-finite"):
        assert label_phases([np.nan] * 10) == [Phase(0, 10, "stabilization")]


def test_phase_boundaries_keep_original_positions_with_nans() -> None:
    x, _ = trajectory(1000)
    x[:50] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped 50 non-finite"):
        phases = label_phases(x)
    assert phases[0].start == 0 and phases[-1].stop == 1000
    assert abs(phases[1].start - 100) <= 10


@pytest.mark.parametrize(
    "options, match",
    [
        ({"min_change": -0.1}, r"min_change must be a number in \[0.0, inf\], got -0.1"),
        ({"trend_threshold": 200}, r"trend_threshold must be a number in \[0.0, 100.0\], got 200"),
        ({"min_length": 1}, r"min_length must be an integer in \[2, 1048576\], got 1"),
        ({"max_points": 8}, r"max_points must be an integer in \[16, 65536\], got 8"),
        ({"resolution": 2.0}, r"resolution must be a number in \[0.0, 1.0\], got 2.0"),
    ],
)
def test_bad_phase_options_raise(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        label_phases(np.zeros(100), **options)
    with pytest.raises(ValueError, match=match):
        OnlineDetector(**options)


@pytest.mark.parametrize("module", [detect, jumps, phases, online], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.filterwarnings("ignore:.*non-finite")
@pytest.mark.parametrize("kind", ["shifts", "nan", "short", "empty", "constant"])
def test_phases_and_jumps_equal_the_two_calls(kind):
    rng = np.random.default_rng(3)
    x = np.r_[np.full(700, 4.0), np.linspace(4.0, 2.0, 600), np.full(700, 6.0)] + rng.normal(0, 0.1, 2000)
    x = {"shifts": x, "nan": np.where(rng.random(2000) < 0.05, np.nan, x), "short": x[:6],
         "empty": x[:0], "constant": np.full(300, 2.5)}[kind]  # fmt: skip
    phases, jumps = detect.phases_and_jumps(x)
    assert phases == label_phases(x) and jumps == find_jumps(x)
    if kind in ("shifts", "nan"):
        assert [j.index for j in jumps] == [1300] and len(phases) >= 2
