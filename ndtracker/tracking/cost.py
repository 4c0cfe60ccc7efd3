"""What sampling costs the training loop, read from the loop's own clock, and a warning when it is high.

The tracker's host time is not its cost on a GPU: a sample's one synchronisation also waits for the
work the training step queued before it. So the cost is read from the loop instead: the wall time
between consecutive :meth:`~ndtracker.Tracker.step` calls, for the steps the tracker touched (the
one whose :meth:`~ndtracker.Tracker.step` call measures a sample's weights and arms the hooks, the
sampled step itself, and the step after them, which refills the caches a sample evicted) against
the median of the steps apart from samples, as a benchmark compares a tracked loop with a bare
one. It needs untouched steps, so it is silent at ``every`` of 1 or 2, and it leaves out the
first two samples (cold starts).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["Overhead", "OverheadMeter", "WARN_SHARE"]

WINDOW = 256  # step intervals kept (the figures describe the recent past)
MIN_SAMPLES = 8  # samples in the window before a figure is given
MIN_QUIET = 8  # untouched steps in the window before a figure is given
WARMUP = 2  # first samples left out (a stream's first measurement starts cold and deep)
CHECK_EVERY = 8  # samples between two evaluations by check() (one costs ~50 µs of Python)
WARN_SHARE = 0.3  # a loop slowed by more than this fraction is warned about (once) ...
WARN_MS = 20.0  # ... if each sample costs it more than this many milliseconds (below, 10 000 steps
# at every=5 lose under 40 s: a tiny model's loop, slowed in relative terms only, is not warned about)
STALL = 8.0  # a sample's extra time this many spreads (at least steps) above the median is a stall


@dataclass(frozen=True)
class Overhead:
    """What sampling has cost the training loop over the last few hundred steps.

    Attributes:
        share: The touched steps' extra wall time as a fraction of the loop's time without it
            (0.25: the loop runs 25 % slower than it would untracked).
        per_sample_ms: Extra wall time per sample (a mean without the stalls of the loop's own that
            fell on a sample's steps), in milliseconds.
        step_ms: Median wall time of an untouched step, in milliseconds.
        samples: Samples in the window the figures come from.
    """

    share: float
    per_sample_ms: float
    step_ms: float
    samples: int

    def advice(self, every: object) -> str:
        """A warning text: the figures and the options that make sampling cheaper."""
        return (
            f"sampling costs about {self.share:.0%} of the training loop's time so far "
            f"({self.per_sample_ms:.1f} ms per sample; a step without sampling takes "
            f"{self.step_ms:.1f} ms; every={every}). To make it cheaper: a larger every=, "
            "weight_every= a multiple of every (weights change slowly), max_rows=1024, fewer "
            "layers (layers=[...] or max_layers=), or detect=False (no online events); "
            "Tracker.overhead gives the current figure"
        )


class OverheadMeter:
    """The wall time of the loop's recent steps, marked touched or not (see the module docstring)."""

    def __init__(self) -> None:
        self._intervals: deque[tuple[float, bool, bool]] = deque(maxlen=WINDOW)  # (seconds, touched, sample)
        self._last: float | None = None
        self._touched = self._sample = False
        self._begun = 0  # samples begun
        self._next_check = 0  # samples begun at which check() evaluates next
        self.warned = False

    def tick(self, now: float, touches_next: bool, sample_next: bool) -> None:
        """A :meth:`~ndtracker.Tracker.step` call entered at ``now`` (seconds, monotonic).

        Args:
            now: The call's entry time (the end of the user's step).
            touches_next: Whether this call does sampling work (which falls in the next interval).
            sample_next: Whether the step this call begins is sampled.
        """
        if self._last is not None and self._begun > WARMUP:
            self._intervals.append((now - self._last, self._touched, self._sample))
        self._last, self._touched, self._sample = now, touches_next, sample_next
        self._begun += sample_next

    def overhead(self) -> Overhead | None:
        """The figures over the window, or None while it holds too few samples or untouched steps."""
        kinds = self._kinds()
        samples = sum(sample for _, _, sample in self._intervals)
        apart = [seconds for (seconds, _, _), kind in zip(self._intervals, kinds) if kind == "apart"]
        quiet = apart if len(apart) >= MIN_QUIET else [
            seconds for (seconds, _, _), kind in zip(self._intervals, kinds) if kind != "touched"
        ]  # fmt: skip
        if len(quiet) < MIN_QUIET or samples < MIN_SAMPLES:
            return None
        step = statistics.median(quiet)
        if step <= 0:
            return None
        extra = max(_mean_without_stalls(self._extra_per_sample(step, kinds), step), 0.0)
        share = extra * samples / (step * len(self._intervals))
        return Overhead(share, 1e3 * extra, 1e3 * step, samples)

    def _kinds(self) -> list[str]:
        """Each interval: ``touched``, ``after`` (the first untouched one after a touched one:
        the sample evicted the step's data from the caches, which it refills) or ``apart``."""
        kinds, previous = [], False
        for _, touched, _ in self._intervals:
            kinds.append("touched" if touched else "after" if previous else "apart")
            previous = touched
        return kinds

    def _extra_per_sample(self, step: float, kinds: list[str]) -> list[float]:
        """Each sample's extra time: its touched intervals and the one after them, less a step each.

        Against the median step apart from samples, and averaged without the stalls
        (:func:`_mean_without_stalls`), so an evaluation pass or a checkpoint that falls on a
        sample's steps (every 50 steps at every=5: one sample in ten) does not read as the
        tracker's cost, while the samples that cost more by design (the online detector checks
        every 4th and 8th value) still count.
        """
        extras: list[float] = []
        for (seconds, _, sample), kind in zip(self._intervals, kinds):
            if sample:
                extras.append(0.0)
            if kind != "apart" and extras:
                extras[-1] += seconds - step
        if len(extras) > 1 and kinds[-1] != "apart":  # the last sample's intervals are not all in yet
            extras.pop()
        return extras

    def check(self) -> Overhead | None:
        """The figures, the first time they exceed :data:`WARN_SHARE` and :data:`WARN_MS` (then never
        again); evaluated once every :data:`CHECK_EVERY` samples (None in between)."""
        if self.warned or self._begun < self._next_check:
            return None
        self._next_check = self._begun + CHECK_EVERY
        found = self.overhead()
        if found is None or found.share <= WARN_SHARE or found.per_sample_ms <= WARN_MS:
            return None
        self.warned = True
        return found


def _mean_without_stalls(extras: list[float], step: float) -> float:
    """The mean of the samples' extra times (seconds, at least one) without the stalls: those more
    than :data:`STALL` spreads above the median, the spread being the largest of 1.4826 times the
    median absolute deviation, half the median and one ``step`` (an untouched step's time). A
    stall of the loop's own (an evaluation pass, a checkpoint) is many steps long; a sample that
    costs a few times the others by design (a detector check) is within that. Stalls on more than
    half of the samples (an evaluation after every sample) cannot be told from the tracker's cost."""
    center = statistics.median(extras)
    deviation = statistics.median(abs(extra - center) for extra in extras)
    spread = max(1.4826 * deviation, 0.5 * abs(center), step)
    kept = [extra for extra in extras if extra <= center + STALL * spread]
    return sum(kept) / len(kept)
