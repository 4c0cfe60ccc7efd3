"""The Tracker's options: checked once, at construction, into one frozen record.

Every check raises with what was passed and what was expected (STYLE rule 5 and 6), so a bad
option never surfaces at step 10 000.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ndtracker.checks import boolean, choice, optional_positive_int, positive_int
from ndtracker.tracking.layers import is_compiled
from ndtracker.tracking.schedule import Schedule, check_schedule
from ndtracker.vocabulary import DEFAULT_METRICS, ESTIMATORS, FULL_SPECTRUM, METRICS, SPACES

HOOK_MODES: tuple[str, ...] = ("auto", "sampled", "permanent")
CONV_LAYOUTS: tuple[str, ...] = ("channel", "sample")
DEFAULT_MAX_BUFFER_ROWS = 200_000


@dataclass(frozen=True)
class Options:
    """The checked measurement options of a Tracker (see :class:`ndtracker.Tracker` for each)."""

    every: Schedule
    weight_every: int | None
    metrics: frozenset[str]
    spaces: tuple[str, ...]
    estimator: str
    conv: str
    hooks: str
    max_rows: int | None
    center: bool
    track_eval: bool
    output_key: str | None
    seed: int
    gradients: bool = False
    similarity: bool = False
    linear_probes: bool = False
    condensation: bool = False

    def weights_at(self, step: int) -> bool:
        """Whether weights are measured at ``step`` (a sampled step)."""
        every = self.weight_every
        return "weight" in self.spaces and (every is None or step % every == 0)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values, metrics in :data:`METRICS` order, for ``run.json``."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["every"] = self.every.as_json()
        values["metrics"] = [m for m in METRICS if m in self.metrics]
        values["spaces"] = list(self.spaces)
        return values


def check_options(model: nn.Module, **given: Any) -> Options:
    """Check the Tracker's measurement options and resolve their defaults.

    Args:
        model: The model as the user passed it (a compiled one picks permanent hooks).
        **given: ``every``, ``weight_every``, ``metrics``, ``spaces``, ``estimator``, ``conv``,
            ``hooks``, ``max_rows``, ``center``, ``track_eval``, ``output_key`` and ``seed``, as
            passed to the Tracker, and optionally ``gradients``, ``similarity``,
            ``linear_probes`` and ``condensation``.

    Returns:
        The checked :class:`Options`.

    Raises:
        ValueError: If an option is out of range or an unknown choice.
        TypeError: If ``gradients``, ``similarity``, ``linear_probes`` or ``condensation`` is not a bool.
    """
    every = check_schedule("every", given["every"])
    metrics = frozenset(check_metrics(given["metrics"]))
    estimator = choice("estimator", given["estimator"], ("auto",) + ESTIMATORS)
    check_estimator_metrics(estimator, metrics)
    options = Options(
        every=every,
        weight_every=check_weight_every(given["weight_every"], every),
        metrics=metrics,
        spaces=check_spaces(given["spaces"]),
        estimator=estimator,
        conv=choice("conv", given["conv"], CONV_LAYOUTS),
        hooks=hook_mode(choice("hooks", given["hooks"], HOOK_MODES), model),
        max_rows=check_max_rows(given["max_rows"]),
        center=boolean("center", given["center"]),
        track_eval=boolean("track_eval", given["track_eval"]),
        output_key=given["output_key"],
        seed=int(given["seed"]),
        **{name: boolean(name, given.get(name, False))
           for name in ("gradients", "similarity", "linear_probes", "condensation")},  # fmt: skip
    )
    check_extras(options)
    return options


def check_extras(options: Options) -> None:
    """Refuse an opt-in measurement whose space is not measured."""
    for name, space in (("similarity", "activation"), ("linear_probes", "activation"), ("gradients", "weight")):
        if getattr(options, name) and space not in options.spaces:
            raise ValueError(f"{name}=True needs the {space} space, got spaces={options.spaces!r}; "
                             f"add {space!r} to spaces or drop {name}=True")  # fmt: skip


def hook_mode(requested: str, model: nn.Module) -> str:
    """Resolve ``hooks="auto"``: permanent, gated hooks for compiled models, sampled otherwise."""
    if requested != "auto":
        return requested
    return "permanent" if is_compiled(model) else "sampled"


def check_weight_every(value: int | None, every: Schedule) -> int | None:
    """``weight_every``: a multiple of each interval of ``every``, so that it names sampled steps.

    None (weights at every sampled step) is recorded as ``every`` when ``every`` is one int.
    """
    if value is None:
        return every.intervals[0] if len(every.intervals) == 1 else None
    value = positive_int("weight_every", value)
    if any(value % interval for interval in every.intervals):
        each = "" if len(every.intervals) == 1 else "each interval of "
        raise ValueError(f"weight_every must be a multiple of {each}every={every}, got {value!r}")
    return value


def check_max_rows(value: Any) -> int | None:
    """``max_rows``: None (every row) or at least 2 (one centred row has no spectrum)."""
    value = optional_positive_int("max_rows", value)
    if value == 1:
        raise ValueError("max_rows must be at least 2 or None (a single centred row has no spectrum), got 1")
    return value


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The metric names asked for (:data:`DEFAULT_METRICS` for None); a name alone is allowed."""
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty selection of {METRICS}, got {metrics!r}")
    return tuple(metrics)


def check_spaces(spaces: str | Sequence[str]) -> tuple[str, ...]:
    """The spaces to measure, ``"activation"``, ``"weight"`` or both."""
    try:
        chosen = (spaces,) if isinstance(spaces, str) else tuple(spaces)
    except TypeError:
        chosen = ()
    if not chosen or any(s not in SPACES for s in chosen):
        raise ValueError(
            f"spaces must be 'activation', 'weight', or both as ('activation', 'weight'), got {spaces!r}"
        )
    return chosen


def check_estimator_metrics(estimator: str, metrics: frozenset[str]) -> None:
    """Refuse ``estimator="randomized"`` with a full-spectrum metric (it gives the moments only)."""
    if estimator == "randomized" and FULL_SPECTRUM & metrics:
        raise ValueError(
            f"estimator='randomized' gives stable_rank and participation_ratio only, got metrics "
            f"{sorted(metrics)}; use estimator='auto' or 'exact' for effective_rank and energy90"
        )


RENAMED: dict[str, str] = {"probes": "linear_probes"}
"""Options renamed before the first release: old name -> new name."""


def check_unknown(unknown: dict[str, Any]) -> None:
    """Refuse keyword arguments the Tracker does not take, naming a renamed option's new name.

    Raises:
        TypeError: If ``unknown`` is not empty.
    """
    for name, value in unknown.items():
        if name in RENAMED:
            new = RENAMED[name]
            raise TypeError(f"Tracker({name}={value!r}): the option was renamed {new}= (so that it does not "
                            f"clash with probe=, the probe batch); pass {new}={value!r}")  # fmt: skip
    if unknown:
        raise TypeError(f"Tracker() got unexpected keyword arguments {sorted(unknown)}")
