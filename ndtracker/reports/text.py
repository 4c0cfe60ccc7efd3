"""Text shared by the terminal and HTML views: names, numbers and the run facts above a report.

Every name and value that comes from a run (layer names, ``run.json`` values, paths) goes through
`literal` before it is shown: control characters (terminal escape sequences, bidirectional
overrides) are replaced by visible escapes such as ``\\x1b``, so nothing in a log can drive the
terminal. The terminal view also shows them as rich ``Text``, never as markup.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Comparison, Report

__all__ = [
    "MODEL_NAME", "literal", "display_name", "number", "info_lines", "steps_line", "every_words",
    "comparison_lines",
]  # fmt: skip

MODEL_NAME = "(model)"  # how the model itself (layer name "") is shown
# C0 and C1 controls, DEL, bidirectional embeddings, overrides and isolates, lone surrogates
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def literal(text: object) -> str:
    r"""Return ``str(text)`` with every control character replaced by a visible escape.

    Example:
        >>> literal("fc\x1b[2J")
        'fc\\x1b[2J'
    """
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_name(layer: str | None) -> str:
    """Return how a layer is shown: its name (literally), or ``(model)`` for the model itself (``""``)."""
    return literal(layer) if layer else MODEL_NAME


def number(value: Any) -> str:
    """Format a metric value in four significant digits; ``-`` for a missing or non-finite one."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4g}"


def info_lines(rep: Report) -> list[tuple[str, str]]:
    """Return the run facts shown above a report, as (label, text) pairs.

    The run directory is shown by its name only, so the summary does not depend on where it lies.
    """
    info = rep.run
    version = info.get("ndtracker_version", "?")
    layers = info.get("layers")
    tracked = (len(layers) if isinstance(layers, list) else 0) or "?"
    lines = [("run", f"{rep.run_id}  ({_folder_name(rep.run_dir)})")]
    lines.append(("started", str(info.get("started", "?"))))
    lines.append(("model", f"{info.get('model', '?')}, ndtracker {version}"))
    lines.append(("steps", steps_line(rep)))
    lines.append(("layers", f"{len(rep.layers)} shown of {tracked} tracked"))
    if rep.rank is not None:
        lines.append(("rank", _rank_line(rep)))
    steps, loss = rep.loss
    if loss.size:
        first, last = (f"{number(loss[i])} at step {steps[i]}" for i in (0, -1))
        lines.append(("loss", f"{first} -> {last}"))
    return [(key, literal(value)) for key, value in lines + [("metric", rep.metric)]]


def _rank_line(rep: Report) -> str:
    """Which rank's rows a report of a run with several writing ranks shows."""
    distributed = rep.run.get("distributed")
    world = distributed.get("world_size") if isinstance(distributed, dict) else None
    of = f" of {world}" if isinstance(world, int) else ""
    return f"{rep.rank}{of} (each rank wrote its own rows; choose with rank= or --rank)"


def steps_line(rep: Report) -> str:
    """Return ``first-last, every N, S samples`` for the report's series."""
    ranges = [(int(s.steps[0]), int(s.steps[-1])) for s in rep.series if s.steps.size]
    low, high = min((a for a, _ in ranges), default=0), max((b for _, b in ranges), default=0)
    samples = max((s.steps.size for s in rep.series), default=0)
    options = rep.run.get("options")
    every = options.get("every", "?") if isinstance(options, dict) else "?"
    return literal(f"{low}-{high}, {every_words(every)}, {samples} samples")


def every_words(every: object) -> str:
    """Return the sampling schedule ``every`` of ``run.json`` in words.

    An int ``5`` is ``every 5``; a schedule of ``(start, every)`` pairs such as ``[[0, 1], [50, 5]]``
    is ``every 1 step until 49, then every 5`` (a middle pair reads ``every 2 until 99``). Anything
    else (an older or hand-edited ``run.json``) is shown as it is.
    """
    if isinstance(every, int) and not isinstance(every, bool):
        return f"every {every}"
    pairs = every if isinstance(every, list) else []
    if not pairs or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        for p in pairs
    ):
        return f"every {every}"
    if len(pairs) == 1:
        return f"every {pairs[0][1]} from step {pairs[0][0]}" if pairs[0][0] else f"every {pairs[0][1]}"
    parts = []
    for k, (_, interval) in enumerate(pairs[:-1]):
        unit = (" step" if interval == 1 else " steps") if k == 0 else ""
        parts.append(f"every {interval}{unit} until {pairs[k + 1][0] - 1}")
    return ", ".join(parts) + f", then every {pairs[-1][1]}"


def _folder_name(run_dir: str) -> str:
    path = Path(run_dir)
    return path.name or path.resolve().name or str(run_dir)


def comparison_lines(comparison: Comparison) -> list[str]:
    """Return one line per compared run: label, run id, directory, model and steps."""
    lines = []
    for label, rep in (("A", comparison.a), ("B", comparison.b)):
        model = rep.run.get("model", "?")
        lines.append(literal(f"{label}: run {rep.run_id} ({rep.run_dir}), {model}, steps {steps_line(rep)}"))
    return lines
