"""Every option check, in one place and one message format (no torch here).

Each returns the checked value or raises a ValueError that names the option, says what is accepted
and shows the value passed: ``"{name} must be {what is accepted}, got {value!r}"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 0 (not a bool), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else a ValueError naming ``name``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def optional_positive_int(name: str, value: Any) -> int | None:
    """``value`` if it is None or an int >= 1 (not a bool), else a ValueError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def choice(name: str, value: T, accepted: Sequence[T]) -> T:
    """``value`` if it is one of ``accepted``, else a ValueError listing them."""
    if not _is_one_of(value, accepted):
        listed = ", ".join(str(a) for a in accepted)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def _is_one_of(value: Any, accepted: Sequence[Any]) -> bool:
    try:
        return any(type(value) is type(a) and value == a for a in accepted)
    except Exception:  # a value whose == raises (an array) is not one of the names
        return False


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy's included), else a TypeError naming ``name``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")
