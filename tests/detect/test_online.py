"""Tests of ndtracker.detect.online: the online detector agrees with the offline one, in bounded memory."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from synthetic_series import ar1, quiet_jumps, steps, trajectory

from ndtracker.detect import Jump, OnlineDetector, PhaseChange, find_jumps, label_phases
from ndtracker.detect.online import _BlockAccumulator
from ndtracker.detect.phases import _block_sums


def run_online(x: np.ndarray, **options: float) -> tuple[OnlineDetector, list, list[int]]:
    """Feed ``x`` to a new detector; return it, all events and the update count at each event."""
    detector = OnlineDetector(**options)
    events, seen_at = [], []
    for count, value in enumerate(x, start=1):
        new = detector.update(value)
        events += new
        seen_at += [count] * len(new)
    final = detector.finish()
    return detector, events + final, seen_at + [len(x)] * len(final)


def test_online_jumps_equal_offline_jumps() -> None:
    rng = np.random.default_rng(10)
    x = steps(9000, [1500, 4000, 4100, 7000], [8.0, -6.0, 9.0, 12.0], 3) + ar1(9000, 0.3, rng)
    x[rng.random(9000) < 0.01] = np.nan
    detector, events, seen_at = run_online(x)
    online = [e for e in events if isinstance(e, Jump)]
    assert online == quiet_jumps(x)
    assert np.allclose([j.index for j in online], [1501, 4001, 4101, 7001], atol=2)
    lags = [at - e.index for e, at in zip(events, seen_at) if isinstance(e, Jump) and at < len(x)]
    assert lags and max(lags) <= detector.lag * 1.05  # a few skipped non-finite values on top


def test_online_phases_agree_with_offline() -> None:
    x, _ = trajectory(8000, seed=3)
    detector, events, _ = run_online(x)
    offline = label_phases(x)
    assert detector.phases() == offline
    changes = [e for e in events if isinstance(e, PhaseChange)]
    assert [e.kind for e in changes] == [p.kind for p in offline]
    assert all(abs(e.index - p.start) <= 80 for e, p in zip(changes, offline))
    assert [e.previous for e in changes] == [None] + [p.kind for p in offline[:-1]]


def test_online_memory_is_bounded() -> None:
    detector = OnlineDetector()
    rng = np.random.default_rng(11)
    sizes = []
    for block in range(3):
        for value in rng.normal(size=10000) + block:
            detector.update(value)
        sizes.append(detector.memory)
    bound = 2 * detector.horizon + 2 * detector.stride + 2 * 512
    assert max(sizes) <= bound
    assert sizes[2] <= sizes[0] + 128


def test_online_finish_is_final() -> None:
    detector = OnlineDetector()
    detector.update(1.0)
    assert detector.finish() == [PhaseChange(0, "stabilization")]
    assert detector.finish() == []
    with pytest.raises(RuntimeError, match="after finish"):
        detector.update(2.0)


def test_online_counts_skipped_values() -> None:
    detector = OnlineDetector()
    for value in [1.0, math.nan, 2.0, math.inf]:
        detector.update(value)
    detector.finish()
    assert detector.skipped == 2


def test_online_phase_lag_and_stride_are_checked() -> None:
    with pytest.raises(ValueError, match=r"phase_lag must be an integer in \[0, 2147483648\], got -1"):
        OnlineDetector(phase_lag=-1)
    with pytest.raises(ValueError, match=r"stride must be an integer in \[1, 1048576\], got 0"):
        OnlineDetector(stride=0)


@pytest.mark.parametrize("stride", [97, 1500])
def test_online_result_does_not_depend_on_stride(stride: int) -> None:
    x = steps(5000, [1200, 1260, 3000], [7.0, 7.0, -9.0]) + np.random.default_rng(12).normal(size=5000)
    detector, events, _ = run_online(x, stride=stride)
    assert [e for e in events if isinstance(e, Jump)] == find_jumps(x)
    assert detector.phases() == label_phases(x)


@pytest.mark.parametrize(
    "values",
    [[], [3.0], [np.nan] * 10, [1.0, 2.0, np.inf], list(np.full(3000, 7.0)), list(np.arange(2000.0))],
    ids=["empty", "one", "all-nan", "short", "constant", "ramp"],
)
def test_online_equals_offline_on_degenerate_series(values: list[float]) -> None:
    detector, events, _ = run_online(np.array(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert [e for e in events if isinstance(e, Jump)] == find_jumps(values) == []
        assert detector.phases() == label_phases(values)
    assert [e.kind for e in events if isinstance(e, PhaseChange)] == [p.kind for p in detector.phases()]


@pytest.mark.parametrize("value", ["1.0", None, [1.0], np.zeros(2), 1j])
def test_online_rejects_what_is_not_a_number(value: object) -> None:
    detector = OnlineDetector()
    with pytest.raises(TypeError, match="OnlineDetector.update: value must be a real number, got"):
        detector.update(value)  # type: ignore[arg-type]
    assert detector.update(np.float32(1.5)) == [] and detector.update(np.array(2.0)) == []


@pytest.mark.parametrize("n", [1, 7, 513, 1024, 1025, 5000])
def test_block_accumulator_matches_offline_blocks_bit_for_bit(n: int) -> None:
    values = np.random.default_rng(n).normal(size=n) * 1e3
    blocks = _BlockAccumulator(64)
    for position, value in enumerate(values):
        blocks.push(float(value), position)
    sums, counts, starts = blocks.arrays()
    expected_sums, expected_counts = _block_sums(values, 64)
    assert np.array_equal(sums, expected_sums) and np.array_equal(counts, expected_counts)
    assert np.array_equal(starts, np.arange(0, n, int(counts[0])))
