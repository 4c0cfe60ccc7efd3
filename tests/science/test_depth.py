"""Depth profiles: tunnel onset, when it settled, and where a profile stops improving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndtracker.detect.depth import onset_settled, saturation_index, tunnel_onset


def _brute_onset(v: list[float], fraction: float, min_length: int) -> int | None:
    """The documented definition, written out literally."""
    for k in range(1, len(v) - min_length + 1):
        peak = max(v[:k])
        if all(x < fraction * peak for x in v[k:]):
            return k
    return None


@pytest.mark.parametrize(
    "profile, onset",
    [
        ([10, 12, 11, 3, 2, 2.5], 3),
        ([10, 12, 11, 9, 8], None),  # falls, never below half
        ([10, 12, 3, 2, 9], None),  # recovers at the end
        ([10, 12, 11, 9, 2], None),  # only the last layer is low: a head, not a tunnel
        ([1, 4, 1.9, 1.5, 1.2], 2),  # below half of the peak so far, not of the first layer
        ([5.0], None),
        ([], None),
    ],
)
def test_onset_on_known_profiles(profile, onset):
    assert tunnel_onset(profile) == onset


def test_onset_equals_the_literal_definition_on_random_profiles():
    rng = np.random.default_rng(0)
    for _ in range(300):
        v = list(rng.uniform(0.1, 10, rng.integers(2, 9)) * rng.choice([1, 0.1], 1))
        cut = int(rng.integers(1, len(v) + 1))
        v[cut:] = [x * 0.1 for x in v[cut:]]
        for fraction, length in ((0.5, 2), (0.3, 1)):
            assert tunnel_onset(v, fraction=fraction, min_length=length) == _brute_onset(v, fraction, length)


def test_onset_is_scale_invariant_and_skips_nonfinite_layers():
    v = np.array([10.0, 12.0, 11.0, 3.0, 2.0, 2.5])
    assert tunnel_onset(1e-6 * v) == tunnel_onset(v) == 3
    v[4] = np.nan
    assert tunnel_onset(v) == 3


@pytest.mark.parametrize("option, value", [("fraction", 0.0), ("fraction", 1.5), ("min_length", 0)])
def test_bad_options_raise(option, value):
    with pytest.raises(ValueError, match=option):
        tunnel_onset([1.0, 2.0], **{option: value})


def test_settled_is_the_start_of_the_final_run_of_equal_onsets():
    steps = [0, 5, 10, 15, 20]
    assert onset_settled(steps, [None, 4, 3, 3, 3], tolerance=0) == 10
    assert onset_settled(steps, [3, 3, 3, 3, 3], tolerance=0) == 0
    assert onset_settled(steps, [3, 3, 3, 3, None]) is None
    assert onset_settled(steps, [3, None, 3, 3, 3]) == 10
    assert onset_settled(steps, [3, math.nan, 3, 3, 3]) == 10
    assert onset_settled([], []) is None
    with pytest.raises(ValueError, match="differ in length"):
        onset_settled([0, 1], [1])
    with pytest.raises(ValueError, match="tolerance"):
        onset_settled([0], [1], tolerance=-1)


def test_settled_allows_a_one_layer_jitter_by_default():
    steps = [0, 5, 10, 15, 20]
    assert onset_settled(steps, [None, 6, 4, 3, 4]) == 10
    assert onset_settled(steps, [None, 6, 4, 3, 4], tolerance=0) == 20
    assert onset_settled(steps, [8, 6, 4, 3, 4], tolerance=2) == 5


@pytest.mark.parametrize(
    "profile, index",
    [
        ([0.3, 0.6, 0.9, 0.9, 0.905, 0.88], 2),
        ([0.3, 0.6, 0.9, 0.95], 3),
        ([0.9, 0.5, 0.4], 0),
        ([np.nan, 0.5, 0.7], 2),
        ([np.nan, np.nan], None),
    ],
)
def test_saturation_on_known_profiles(profile, index):
    assert saturation_index(profile) == index
