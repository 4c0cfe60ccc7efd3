"""The report's story in words: which layers collapsed or expanded, when, by how much, and the loss.

Pure functions over a finished :class:`~ndtracker.reports.Report`: :func:`findings` picks each
layer's main phases of change (collapse and expansion, largest first) and measures them on the
series itself, and :func:`story_lines` says them in one sentence each, then names the largest
jumps (:func:`jump_lines`). Both views print these lines
at the top of the report, followed by :data:`GLOSSARY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ndtracker.reports.text import display_name, literal, number

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Report, Series

__all__ = [
    "Finding", "findings", "story_lines", "jump_lines", "layer_label", "GLOSSARY", "LEGEND", "MAX_FINDINGS",
]  # fmt: skip

MAX_FINDINGS = 12  # sentences at most at the top of a report, largest changes first
PER_SERIES = 2  # phases of change told per layer and space, at most
EDGE_FRACTION = 0.2  # a phase's start (end) level: the median of its first (last) fifth of samples
JUMP_SERIES = 4  # series whose largest jumps the story names, at most (largest first)
JUMPS_PER_SERIES = 2  # jumps named per layer and space, at most

GLOSSARY: dict[str, str] = {
    "collapse": "the layer's representation concentrates in fewer directions (the metric falls): "
    "normal while a network learns a low-dimensional task, a warning when it reaches about one "
    "direction early and stays there (try a lower learning rate, normalisation, or a wider layer)",
    "expansion": "the representation spreads over more directions (the metric rises): the layer "
    "is taking in new features; unstable or oscillating expansion can signal an unstable optimiser",
    "stabilization": "no net change beyond the noise: the layer has settled",
    "jump": "an abrupt, persistent level shift between two samples (a learning-rate step, a "
    "restart, an instability, or a sudden change in what the layer encodes)",
}

LEGEND = (
    "collapse: fewer directions carry the layer's signal; expansion: more; stabilization: no change "
    "beyond the noise; jump: an abrupt lasting shift. See the README's \"What the phases mean\"."
)


@dataclass(frozen=True)
class Finding:
    """One phase of change of one layer, measured on its series.

    Attributes:
        layer, space, kind: Which series, and ``"collapse"`` or ``"expansion"``.
        start_step, end_step: The phase's first and last sampled steps.
        first, last: The metric's smoothed level at the phase's start and end (as labelled; the
            medians of its edge samples where the phase has no level).
        relative_change: ``last / first - 1``.
        loss_first, loss_last: The loss at the sampled steps nearest the phase's ends (NaN if none).
    """

    layer: str
    space: str
    kind: str
    start_step: int
    end_step: int
    first: float
    last: float
    relative_change: float
    loss_first: float
    loss_last: float


def findings(rep: Report) -> list[Finding]:
    """The main phases of change of every series, largest relative change first.

    At most :data:`PER_SERIES` per layer and space, and :data:`MAX_FINDINGS` in all.
    """
    series = {(s.layer, s.space): s for s in rep.series}
    loss_steps, loss = rep.loss
    found: list[Finding] = []
    for (layer, space), rows in _changes(rep).items():
        item = series.get((layer, space))
        if item is None:
            continue
        measured = [_measure(item, row, loss_steps, loss) for row in rows]
        measured.sort(key=lambda f: -abs(f.relative_change))
        found += measured[:PER_SERIES]
    found.sort(key=lambda f: -abs(f.relative_change))
    return found[:MAX_FINDINGS]


def story_lines(rep: Report) -> list[str]:
    """One sentence per finding, or one sentence saying that nothing changed."""
    found = findings(rep)
    if not rep.series:
        return ["No samples to tell about yet."]
    if not found:
        return [f"No layer collapsed or expanded: every {rep.metric} curve stayed level within its noise."]
    return [_sentence(rep, f) for f in found] + jump_lines(rep)


def jump_lines(rep: Report) -> list[str]:
    """One sentence per layer and space naming its largest jumps with their size relative to the
    level, for the :data:`JUMP_SERIES` series with the largest jumps (at most
    :data:`JUMPS_PER_SERIES` each, largest first); ``[]`` without jumps."""
    jumps = rep.jumps
    if jumps.empty:
        return []
    groups: dict[tuple[str, str], list] = {}
    for row in jumps.itertuples(index=False):
        if np.isfinite(row.relative_size):
            groups.setdefault((row.layer, row.space), []).append(row)
    ranked = sorted(groups.items(), key=lambda item: -max(abs(r.relative_size) for r in item[1]))
    lines = []
    for (layer, space), rows in ranked[:JUMP_SERIES]:
        rows = sorted(rows, key=lambda r: -abs(r.relative_size))[:JUMPS_PER_SERIES]
        told = ", ".join(
            f"{'↑' if r.relative_size > 0 else '↓'}{abs(r.relative_size):.0%} at step {int(r.step)}" for r in rows
        )
        noun = "jumps" if len(rows) > 1 else "jump"
        lines.append(f"{layer_label(rep, layer)}, {space}: largest {rep.metric} {noun} {told}.")
    return lines


def layer_label(rep: Report, layer: str) -> str:
    """``name (Type out×in)`` from the run's metadata, or the name alone when it has none."""
    info = next((entry for entry in _layers_info(rep) if entry.get("name") == layer), None)
    name = display_name(layer)
    if not info:
        return name
    kind = literal(info.get("type") or "")
    shape = info.get("weight_shape")
    dims = "×".join(literal(d) for d in shape) if isinstance(shape, list) and shape else ""
    detail = " ".join(part for part in (kind, dims) if part)
    return f"{name} ({detail})" if detail else name


def _layers_info(rep: Report) -> list[dict]:
    layers = rep.run.get("layers")
    return [entry for entry in layers if isinstance(entry, dict)] if isinstance(layers, list) else []


def _changes(rep: Report) -> dict[tuple[str, str], list]:
    phases = rep.phases
    if phases.empty:
        return {}
    moving = phases[phases["kind"].isin(("collapse", "expansion"))]
    groups: dict[tuple[str, str], list] = {}
    for row in moving.itertuples(index=False):
        groups.setdefault((row.layer, row.space), []).append(row)
    return groups


def _measure(series: Series, row, loss_steps: np.ndarray, loss: np.ndarray) -> Finding:
    inside = (series.steps >= row.start_step) & (series.steps <= row.end_step)
    values = series.values[inside]
    values = values[np.isfinite(values)]
    edge = max(1, int(round(values.size * EDGE_FRACTION)))
    first = _level(row, "start_level", values[:edge])
    last = _level(row, "end_level", values[-edge:])
    relative = last / first - 1 if first else float("nan")
    return Finding(
        layer=row.layer, space=row.space, kind=str(row.kind), start_step=int(row.start_step),
        end_step=int(row.end_step), first=first, last=last, relative_change=relative,
        loss_first=_loss_at(loss_steps, loss, row.start_step), loss_last=_loss_at(loss_steps, loss, row.end_step),
    )  # fmt: skip


def _level(row, name: str, edge: np.ndarray) -> float:
    """The phase's smoothed level as the labeller saw it, else the median of its edge samples."""
    level = float(getattr(row, name, float("nan")))
    if np.isfinite(level):
        return level
    return float(np.median(edge)) if edge.size else float("nan")


def _loss_at(steps: np.ndarray, loss: np.ndarray, step: int) -> float:
    if not steps.size:
        return float("nan")
    return float(loss[int(np.argmin(np.abs(steps - step)))])


def _sentence(rep: Report, f: Finding) -> str:
    verb = "collapsed" if f.kind == "collapse" else "expanded"
    change = f"{number(f.first)} → {number(f.last)} ({f.relative_change:+.0%})"
    text = f"{layer_label(rep, f.layer)}, {f.space}: {verb} over steps {f.start_step}-{f.end_step}, "
    text += f"{rep.metric} {change}"
    if np.isfinite(f.loss_first) and np.isfinite(f.loss_last):
        text += f"; loss {number(f.loss_first)} → {number(f.loss_last)}"
    return text + "."
