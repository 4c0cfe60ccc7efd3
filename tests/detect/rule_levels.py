"""Where the labelling rule measures a phase's two levels (``ndtracker.detect.phases``), for the
rule's tests on synthetic series and on the real-run corpus."""

from __future__ import annotations


def start_index(start: int, stop: int, cuts: set[int]) -> int:
    """Where a phase's start level is measured: at ``start``; at the series' start and after a
    jump, 4 samples in (a whole window) if the phase is longer than a window (9 samples)."""
    return start + 4 if (start == 0 or start in cuts) and stop - start > 9 else start


def end_index(start: int, stop: int, n: int, cuts: set[int]) -> int:
    """Where a phase's end level is measured: at ``stop``; before a jump or the series' end, at its
    last sample with a whole window (4 samples in) if it is longer than a window (9), else at ``stop - 1``."""
    if stop < n and stop not in cuts:
        return stop
    return stop - 5 if stop - start > 9 else stop - 1
