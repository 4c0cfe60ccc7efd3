"""Depth profiles: where, over the tracked layers in model order, a metric falls and stays low.

The *tunnel* (Masarczyk et al., "The Tunnel Effect", NeurIPS 2023): in deep networks the
representation's rank collapses in the deeper layers and stays collapsed to the output. Read from
one sample's *depth profile* ``v[0..L-1]`` (the metric of each tracked layer, in model order):

**Tunnel onset.** The first layer index ``k >= 1`` such that every layer from ``k`` to the last is
below ``fraction`` times the largest value among the layers before ``k``, and at least
``min_length`` layers lie in that stretch; ``None`` when no such ``k`` exists. With the defaults
(``fraction=0.5``, ``min_length=2``) the tunnel starts where the metric has halved from its peak
so far and never recovers; ``min_length=2`` keeps the last layer alone (a classifier head whose
output has as many columns as classes) from counting as a tunnel.

**Onset settled.** Over the sampled steps, the first step from which the onset stays within
``tolerance`` layers (default :data:`SETTLE_TOLERANCE` = 1) of its final value to the end of the
run ("the tunnel formed by step N"), so a boundary that jitters by one layer still counts as
formed; ``None`` when the final onset is ``None``.

**Saturation over depth.** For a profile that should rise with depth (linear-probe accuracy), the
first index ``k`` such that no later layer beats the best of layers ``0..k`` by more than
``tolerance``: where the profile stops improving.

Non-finite values in a profile count as positions but never as "low" or as a maximum. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "TUNNEL_FRACTION", "TUNNEL_MIN_LENGTH", "SETTLE_TOLERANCE", "SATURATION_TOLERANCE",
    "tunnel_onset", "onset_settled", "saturation_index",
]  # fmt: skip

TUNNEL_FRACTION = 0.5
"""A layer is inside the tunnel when its metric is below this fraction of the peak before it."""

TUNNEL_MIN_LENGTH = 2
"""The fewest layers a tunnel spans (so a lone small output head is not one)."""

SETTLE_TOLERANCE = 1
"""Layers the onset may move by, once settled."""

SATURATION_TOLERANCE = 0.01
"""Gains over depth at most this large (absolute, e.g. accuracy) do not count as improving."""


def _profile(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D depth profile, got shape {array.shape}")
    return array


def tunnel_onset(
    profile: ArrayLike, *, fraction: float = TUNNEL_FRACTION, min_length: int = TUNNEL_MIN_LENGTH
) -> int | None:
    """Return the index of the first layer of the tunnel in a depth profile, or None.

    Args:
        profile: The metric of each layer in model order, shape ``(L,)``.
        fraction: Inside the tunnel means below ``fraction`` x the peak of the earlier layers,
            in (0, 1]. Default :data:`TUNNEL_FRACTION`.
        min_length: The fewest layers from the onset to the last one (positive int). Default
            :data:`TUNNEL_MIN_LENGTH`.

    Returns:
        The onset index ``k`` (``1 <= k <= L - min_length``), or None when there is no tunnel.

    Raises:
        ValueError: ``profile`` is not 1-D, or ``fraction``/``min_length`` is out of range.

    Example:
        >>> tunnel_onset([10.0, 12.0, 11.0, 3.0, 2.0, 2.5])
        3
        >>> tunnel_onset([10.0, 12.0, 11.0, 9.0]) is None
        True
    """
    v = _profile(profile, "profile")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length must be a positive integer, got {min_length!r}")
    peaks = np.fmax.accumulate(np.where(np.isfinite(v), v, -np.inf))  # peaks[i] = max(v[:i+1])
    low_from = _low_suffix(v, peaks, fraction)
    for k in range(1, v.size - min_length + 1):
        if low_from[k] and np.isfinite(peaks[k - 1]):
            return k
    return None


def _low_suffix(v: np.ndarray, peaks: np.ndarray, fraction: float) -> np.ndarray:
    """``out[k]``: every finite layer from ``k`` on is below ``fraction * peaks[k - 1]``
    and at least one is finite."""
    out = np.zeros(v.size + 1, bool)
    worst, finite = -np.inf, False
    for k in range(v.size - 1, 0, -1):
        if np.isfinite(v[k]):
            worst, finite = max(worst, v[k]), True
        out[k] = finite and worst < fraction * peaks[k - 1]
    return out


def onset_settled(
    steps: Sequence[int] | np.ndarray, onsets: Sequence[int | None], *, tolerance: int = SETTLE_TOLERANCE
) -> int | None:
    """Return the first step from which the onset stays within ``tolerance`` of its final value.

    Args:
        steps: Sampled steps, increasing, shape ``(n,)``.
        onsets: The tunnel onset at each step (None where there is no tunnel), shape ``(n,)``.
        tolerance: Layers the onset may differ from its final value by (non-negative; default
            :data:`SETTLE_TOLERANCE`).

    Returns:
        The step, or None when there are no steps or the last onset is None.

    Example:
        >>> onset_settled([0, 10, 20, 30], [None, 5, 3, 3])
        20
        >>> onset_settled([0, 10, 20, 30], [None, 5, 4, 3], tolerance=0)
        30
    """
    if len(steps) != len(onsets):
        raise ValueError(f"steps and onsets differ in length: {len(steps)} and {len(onsets)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance!r}")
    if not len(onsets) or _missing(onsets[-1]):
        return None
    final, first = onsets[-1], len(onsets) - 1
    while first > 0 and not _missing(onsets[first - 1]) and abs(onsets[first - 1] - final) <= tolerance:
        first -= 1
    return int(steps[first])


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def saturation_index(profile: ArrayLike, *, tolerance: float = SATURATION_TOLERANCE) -> int | None:
    """Return the first layer index after which the profile improves by at most ``tolerance``.

    Args:
        profile: Values that should rise with depth (probe accuracy), shape ``(L,)``.
        tolerance: Largest gain over the best so far that does not count (default
            :data:`SATURATION_TOLERANCE`), non-negative.

    Returns:
        The index ``k`` such that ``max(profile[k+1:]) <= max(profile[:k+1]) + tolerance``, the
        smallest such; None when the profile has no finite value.

    Example:
        >>> saturation_index([0.3, 0.6, 0.9, 0.9, 0.905, 0.88])
        2
    """
    v = _profile(profile, "profile")
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance!r}")
    finite = np.where(np.isfinite(v), v, -np.inf)
    if not np.isfinite(finite).any():
        return None
    peaks = np.maximum.accumulate(finite)
    later = np.r_[np.maximum.accumulate(finite[::-1])[::-1][1:], -np.inf]  # max(v[k+1:])
    for k in range(v.size):
        if np.isfinite(peaks[k]) and later[k] <= peaks[k] + tolerance:
            return k
    return None
