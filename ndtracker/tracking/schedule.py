"""Which steps a Tracker samples: ``every=5`` or a schedule such as ``[(0, 1), (100, 5)]``.

A schedule is a list of ``(start, every)`` pairs with increasing starts, the first at step 0: from
step ``start`` on (until the next pair's start), the steps that are multiples of ``every`` are
sampled. ``every=5`` is the schedule ``[(0, 5)]``: steps 0, 5, 10, ... ``[(0, 1), (100, 5)]``
samples every step up to 99, then 100, 105, ... Steps are absolute (``start_step`` included), so a
resumed run keeps the cadence of the run it continues.

The Tracker asks :meth:`Schedule.next_sampled` once per sample, so deciding whether a step is
sampled stays one integer comparison on the hot path.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Schedule", "check_schedule"]

PAIRS_FORM = "list of (start, every) pairs such as [(0, 1), (100, 5)]"
SCHEDULE_FORM = f"a positive int or a {PAIRS_FORM}"


@dataclass(frozen=True)
class Schedule:
    """The sampled steps: from each ``start`` on, the multiples of its ``every``.

    Attributes:
        pairs: ``((start, every), ...)``, starts increasing from 0, every ``every`` positive.

    Example:
        >>> schedule = Schedule(((0, 1), (100, 5)))
        >>> schedule.next_sampled(98), schedule.next_sampled(101)
        (98, 105)
    """

    pairs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", check_pairs(self.pairs, self.pairs))

    @property
    def starts(self) -> list[int]:
        """The first step of each pair."""
        return [start for start, _ in self.pairs]

    @property
    def intervals(self) -> tuple[int, ...]:
        """The ``every`` of each pair."""
        return tuple(every for _, every in self.pairs)

    def every_at(self, step: int) -> int:
        """The sampling interval in force at ``step``."""
        return self.pairs[bisect.bisect_right(self.starts, step) - 1][1]

    def is_sampled(self, step: int) -> bool:
        """Whether ``step`` is sampled."""
        return step % self.every_at(step) == 0

    def next_sampled(self, step: int) -> int:
        """The first sampled step at or after ``step`` (``step >= 0``)."""
        index = bisect.bisect_right(self.starts, step) - 1
        while True:
            every = self.pairs[index][1]
            candidate = -(-step // every) * every
            if index + 1 == len(self.pairs) or candidate < self.pairs[index + 1][0]:
                return candidate
            index, step = index + 1, self.pairs[index + 1][0]

    def as_json(self) -> int | list[list[int]]:
        """``every`` as recorded in ``run.json``: an int for one pair from step 0, else the pairs."""
        if len(self.pairs) == 1:
            return self.pairs[0][1]
        return [list(pair) for pair in self.pairs]

    def __str__(self) -> str:
        return str(self.as_json())


EverySpec = Union[int, Sequence[Sequence[int]], Schedule]


def check_schedule(name: str, value: Any) -> Schedule:
    """``every`` (or another option named ``name``) as a :class:`Schedule`.

    Raises:
        ValueError: ``value`` is neither a positive int, a schedule nor a list of pairs; a pair
            is malformed, the starts do not increase from 0, or an interval is not a positive int.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return Schedule(((0, value),))
    if isinstance(value, (str, bytes, bool, int)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a positive integer, got {value!r} (or a schedule: a {PAIRS_FORM})")
    return Schedule(check_pairs(value, value, name))


def check_pairs(pairs: Any, given: Any, name: str = "every") -> tuple[tuple[int, int], ...]:
    """The pairs as a tuple of int pairs, or a ValueError saying what is wrong with ``given``."""
    checked: list[tuple[int, int]] = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"{name} must be {SCHEDULE_FORM}; {pair!r} is not a (start, every) pair in {given!r}")
        start, every = pair
        if not _is_int(start) or start < 0 or not _is_int(every) or every < 1:
            raise ValueError(
                f"{name}: in {given!r}, ({start!r}, {every!r}) needs a start >= 0 and an every >= 1, both ints"
            )
        checked.append((int(start), int(every)))
    if not checked or checked[0][0] != 0:
        raise ValueError(f"{name} must be {SCHEDULE_FORM}, the first pair starting at step 0; got {given!r}")
    if any(b[0] <= a[0] for a, b in zip(checked, checked[1:])):
        raise ValueError(f"{name}: the starts of {given!r} must increase strictly")
    return tuple(checked)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
