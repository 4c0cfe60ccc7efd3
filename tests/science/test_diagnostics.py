"""Each diagnosed condition fires on a synthetic run that has it and on none that lacks it."""

from __future__ import annotations

import numpy as np
import pytest

from ndtracker.reports.diagnostics import CONDITIONS, DIAGNOSTIC_COLUMNS, diagnose
from synthetic_runs import STEPS, T, healthy, noisy, series, settling, with_layer


def _conditions(run, **options) -> list[tuple[str, tuple[str, ...]]]:
    found = diagnose(run, "stable_rank", **options)
    assert list(found.columns) == DIAGNOSTIC_COLUMNS
    return list(zip(found.condition, found.layers))


@pytest.mark.parametrize("widths", [(40, 35, 30, 25, 20, 10), (5, 9, 12, 30), (3, 3)])
def test_a_healthy_run_triggers_nothing(widths):
    assert _conditions(healthy(widths)) == []


def test_weight_space_is_read_too_and_short_runs_are_skipped():
    run = healthy() + [series("l0", np.full(STEPS.size, 1.1), "weight")]
    assert _conditions(run) == [("collapsed", ("l0",))]
    assert _conditions([series("a", np.full(5, 1.0))]) == []


def test_collapsed_layer():
    collapsing = noisy(1.05 + 20 * np.exp(-T / 10), 7)
    found = diagnose(with_layer(healthy(), 3, collapsing), "stable_rank")
    assert list(zip(found.condition, found.layers)) == [("collapsed", ("l3",))]
    row = found.iloc[0]
    assert row.first_step == STEPS[np.flatnonzero(collapsing > 1.5)[-1] + 1] and row.last_step == STEPS[-1]
    assert CONDITIONS["collapsed"] in row.meaning and row.meaning.startswith("l3 (activation)")


def test_a_narrow_layer_at_one_direction_is_not_collapsed():
    run = with_layer(healthy(), 5, np.ones(STEPS.size))
    assert _conditions(run, widths={("l5", "activation"): 1}) == []
    assert _conditions(run) == [("collapsed", ("l5",))]


def test_bottleneck_a_layer_stops_while_a_deeper_one_still_expands():
    run = with_layer(healthy(), 4, noisy(5 + 35 * T / T[-1], 9))
    found = diagnose(run, "stable_rank")
    assert set(zip(found.condition, found.layers)) == {("bottleneck", (f"l{i}",)) for i in range(4)}
    assert (found.first_step == STEPS[STEPS.size // 2]).all()


def test_unstable_expansion():
    swinging = noisy(20 + 0.05 * T + 6 * (-1) ** T, 3)
    found = diagnose(with_layer(healthy(), 2, swinging), "stable_rank")
    assert list(zip(found.condition, found.layers)) == [("unstable", ("l2",))]
    assert (found.first_step.iloc[0], found.last_step.iloc[0]) == (STEPS[0], STEPS[-1])


def test_a_single_spike_is_not_unstable():
    spiky = settling(20, 3)
    spiky[50] *= 2
    assert _conditions(with_layer(healthy(), 2, spiky)) == []


def test_information_flow_early_saturated_later_flat():
    run = [series(f"l{i}", noisy(np.full(STEPS.size, level), i)) for i, level in enumerate((40, 38, 36, 3, 2.5, 2))]
    found = diagnose(run, "stable_rank")
    assert list(zip(found.condition, found.layers)) == [("information_flow", tuple(f"l{i}" for i in range(6)))]


def test_early_layers_that_collapsed_are_not_saturated():
    falling = [series(f"l{i}", noisy(level * (1 + np.exp(-T / 10)), i)) for i, level in enumerate((40, 38, 36))]
    run = falling + [series(f"l{i}", noisy(np.full(STEPS.size, level), i)) for i, level in ((3, 3.0), (4, 2.5), (5, 2.0))]
    assert _conditions(run) == []


def test_information_flow_is_read_in_activation_space_only():
    run = [series(f"l{i}", noisy(np.full(STEPS.size, level), i), "weight") for i, level in enumerate((40, 38, 36, 3, 2.5, 2))]
    assert _conditions(run) == []


def test_information_flow_needs_later_layers_flat():
    run = [series(f"l{i}", noisy(np.full(STEPS.size, level), i)) for i, level in enumerate((40, 38, 36))]
    run += [series(f"l{i}", settling(level, i)) for i, level in ((3, 3.0), (4, 2.5), (5, 2.0))]
    assert "information_flow" not in [c for c, _ in _conditions(run)]
