"""Draw the report's figures with matplotlib and return them as inline SVG strings.

Every figure of the HTML report is drawn here, on a bare :class:`matplotlib.figure.Figure` saved by
matplotlib's SVG canvas (heatmap pixels are rasterised by Agg into an inline PNG): no pyplot, no
global backend switch, no display needed. The module is imported only when HTML is rendered, so the
terminal report never pays for matplotlib.

Figures take plain arrays in training steps, never indices. Long series are thinned for drawing
(:func:`thin`): detection always runs on the full series, upstream.

SVG text is kept as text (``svg.fonttype = "none"``), so a report of 50 layers stays a few MB, and
the ids matplotlib writes are salted per figure so that many figures inline in one page never clash.
Every name drawn (titles, tick labels, legends) goes through :func:`label`: control characters are
escaped and ``$`` is escaped so matplotlib never reads a name as mathtext (``$\\alpha$`` is drawn as
written, ``$\\frac$`` cannot break the page).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from ndtracker.reports.text import literal

MAX_POINTS = 1000  # points per drawn curve, at most (twice the buckets of `thin`)
HEATMAP_COLUMNS = 600  # step bins of the depth x step heatmap
WIDTH = 10.0  # inches
LEFT, RIGHT = 0.13, 0.93  # axes edges, fractions of the width: equal everywhere, so steps line up
MAX_LABEL = 24  # characters of a layer name on the heatmap's axis
PHASE_COLORS = {"collapse": "#d62728", "expansion": "#2ca02c", "stabilization": "#9a9a9a"}
SPACE_COLORS = {"activation": "#1f77b4", "weight": "#8c564b"}
RUN_COLORS = ("#1f77b4", "#ff7f0e")

_PROLOG = re.compile(r"\A.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


@dataclass(frozen=True)
class Curve:
    """One series to draw: a metric (or the loss) over training steps.

    Attributes:
        steps: Training steps, shape (n,), increasing.
        values: Values at those steps, shape (n,); NaN where not finite.
        label: Legend label (a space, a run id), or "" for none.
    """

    steps: np.ndarray
    values: np.ndarray
    label: str = ""


@dataclass(frozen=True)
class Marks:
    """Phases and jumps of one series, in training steps.

    Attributes:
        phases: (start_step, end_step, kind) per phase, end inclusive.
        jumps: (step, value, direction) per jump; direction "up" or "down".
    """

    phases: tuple[tuple[int, int, str], ...] = ()
    jumps: tuple[tuple[int, float, str], ...] = ()


def thin(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS) -> Curve:
    """Thin a series for drawing, keeping each bucket's minimum and maximum so spikes survive.

    Args:
        steps: Training steps, shape (n,), increasing.
        values: Values, shape (n,); NaN allowed.
        max_points: Points to keep at most (default 1000).

    Returns:
        The series itself when ``n <= max_points``, else ``max_points`` points (two per bucket).
    """
    n = len(steps)
    if n <= max_points:
        return Curve(steps, values)
    starts = np.linspace(0, n, max_points // 2, endpoint=False).astype(np.int64)
    with np.errstate(invalid="ignore"):
        low = np.fmin.reduceat(values, starts)
        high = np.fmax.reduceat(values, starts)
    mids = steps[np.minimum(starts + np.diff(np.append(starts, n)) // 2, n - 1)]
    return Curve(np.repeat(mids, 2), np.column_stack([low, high]).ravel())


def heatmap_grid(steps: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Average a series into step bins, for one row of the heatmap.

    Args:
        steps: Training steps, shape (n,).
        values: Values, shape (n,); NaN ignored.
        edges: Bin edges in steps, shape (bins + 1,), increasing.

    Returns:
        Mean value per bin, shape (bins,); NaN for empty bins.
    """
    bins = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    finite = np.isfinite(values)
    total = np.bincount(bins[finite], values[finite], minlength=len(edges) - 1)
    count = np.bincount(bins[finite], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def loss_figure(loss: Curve, xlim: tuple[float, float], salt: str) -> str:
    """Draw the training loss over steps.

    Args:
        loss: The loss per sampled step.
        xlim: Step range of the axis, shared with every other figure.
        salt: Distinct per figure of a page, for the SVG ids.

    Returns:
        The figure as an ``<svg>`` element.
    """
    fig, (ax,) = _panels(1.9, 1)
    shown = thin(loss.steps, loss.values)
    ax.plot(shown.steps, shown.values, color="#333333", lw=1)
    if np.nanmin(loss.values, initial=np.inf) > 0 and _spans_decades(loss.values):
        ax.set_yscale("log")
    _style(ax, xlim, "loss")
    return to_svg(fig, salt)


def heatmap_figure(
    layers: Sequence[str], grid: np.ndarray, edges: np.ndarray, title: str, salt: str
) -> str:
    """Draw the depth x step heatmap of a metric, first tracked layer on top.

    Args:
        layers: Layer names in depth order, length L.
        grid: Metric per layer and step bin, shape (L, bins); NaN where no sample.
        edges: Step bin edges, shape (bins + 1,).
        title: Title (the metric and the space).
        salt: Distinct per figure of a page, for the SVG ids.

    Returns:
        The figure as an ``<svg>`` element (the image inside is an inline PNG).
    """
    fig, (ax,) = _panels(min(1.3 + 0.16 * len(layers), 12.0), 1)
    extent = (edges[0], edges[-1], len(layers) - 0.5, -0.5)
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", extent=extent, cmap="viridis",
                      norm=_color_scale(grid))  # fmt: skip
    ticks = ax.set_yticks(range(len(layers)), [label(name) for name in _tick_labels(layers)], fontsize=6.5)
    cut = {f"{salt}-name-{i}": name for i, name in enumerate(layers) if len(name) > MAX_LABEL}
    for i, tick in enumerate(ticks):
        if f"{salt}-name-{i}" in cut:
            tick.set_gid(f"{salt}-name-{i}")
    ax.set_title(label(title), fontsize=9, loc="left")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    box = ax.get_position()
    bar = fig.colorbar(image, cax=fig.add_axes((RIGHT + 0.01, box.y0, 0.012, box.height)))
    if isinstance(image.norm, LogNorm):
        bar.set_ticks(np.geomspace(image.norm.vmin, image.norm.vmax, 5))
        bar.ax.minorticks_off()
    bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    bar.ax.tick_params(labelsize=7)
    return with_titles(to_svg(fig, salt), cut)


def with_titles(svg: str, titles: dict[str, str]) -> str:
    """Give the SVG groups with these ids a ``<title>``: the full text shown on hover.

    Args:
        svg: The figure's SVG markup.
        titles: Group id to full text (escaped here).
    """
    for gid, text in titles.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{html.escape(literal(text))}</title>', 1)
    return svg


def layer_figure(
    layer: str,
    curves: Sequence[tuple[Curve, Marks]],
    metric: str,
    xlim: tuple[float, float],
    salt: str,
) -> str:
    """Draw one layer: one panel per space, phases shaded and jumps marked.

    Args:
        layer: The layer's name (the title).
        curves: (curve, marks) per space, activation first; ``curve.label`` names the space.
        metric: The metric's column name (the y label).
        xlim: Step range, shared with the loss figure.
        salt: Distinct per figure of a page, for the SVG ids.

    Returns:
        The figure as an ``<svg>`` element.
    """
    fig, axes = _panels(0.8 + 1.5 * len(curves), len(curves))
    for ax, (curve, marks) in zip(axes, curves):
        _draw_phases(ax, marks.phases)
        shown = thin(curve.steps, curve.values)
        ax.plot(shown.steps, shown.values, color=SPACE_COLORS.get(curve.label, "C0"), lw=1)
        _draw_jumps(ax, marks.jumps)
        _style(ax, xlim, f"{curve.label}\n{metric}")
    axes[0].set_title(label(layer), fontsize=9, loc="left", family="monospace")
    return to_svg(fig, salt)


def compare_figure(
    layer: str, pairs: Sequence[tuple[str, Curve, Curve]], metric: str, salt: str
) -> str:
    """Draw one layer of two runs overlaid: one panel per space.

    Args:
        layer: The layer's name (the title), or a title such as "loss".
        pairs: (space, curve of run A, curve of run B) per panel; curve labels name the runs.
        metric: The y label.
        salt: Distinct per figure of a page, for the SVG ids.

    Returns:
        The figure as an ``<svg>`` element.
    """
    fig, axes = _panels(0.8 + 1.5 * len(pairs), len(pairs))
    lows, highs = zip(*(_extent(a, b) for _, a, b in pairs))
    for ax, (space, a, b) in zip(axes, pairs):
        for curve, color in zip((a, b), RUN_COLORS):
            shown = thin(curve.steps, curve.values)
            ax.plot(shown.steps, shown.values, color=color, lw=1, label=label(curve.label))
        _style(ax, (min(lows), max(highs)), f"{space}\n{metric}".strip())
    axes[0].set_title(label(layer), fontsize=9, loc="left", family="monospace")
    axes[0].legend(fontsize=7, loc="upper right", frameon=False)
    return to_svg(fig, salt)


def to_svg(fig: Figure, salt: str) -> str:
    """Render a figure to an ``<svg>`` element ready to inline in HTML.

    Args:
        fig: The figure; it is not reused afterwards.
        salt: Seed of the ids matplotlib writes (clip paths, markers); distinct per figure.

    Returns:
        The SVG markup without XML prolog, DOCTYPE or metadata.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return _METADATA.sub("", _PROLOG.sub("", buffer.getvalue()))


def _panels(height: float, rows: int) -> tuple[Figure, np.ndarray]:
    """Make a figure of ``rows`` stacked axes sharing the step axis, with fixed margins."""
    fig = Figure(figsize=(WIDTH, height))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    bottom, top = 0.45 / height, 1 - 0.3 / height  # fixed in inches
    fig.subplots_adjust(left=LEFT, right=RIGHT, bottom=bottom, top=top, hspace=0.25)
    return fig, axes


def _color_scale(grid: np.ndarray) -> Normalize:
    """Use a log colour scale when the values are positive and span more than a factor of 8."""
    finite = grid[np.isfinite(grid)]
    if finite.size and finite.min() > 0 and finite.max() > 8 * finite.min():
        return LogNorm(finite.min(), finite.max())
    return Normalize()


def _draw_phases(ax, phases: Sequence[tuple[int, int, str]]) -> None:
    """Shade each phase from its first step to the next phase's first step (no gaps)."""
    for i, (start, end, kind) in enumerate(phases):
        stop = phases[i + 1][0] if i + 1 < len(phases) else end
        color = PHASE_COLORS.get(kind, "#cccccc")
        ax.axvspan(start, max(stop, start + 0.5), color=color, alpha=0.13, lw=0)


def _draw_jumps(ax, jumps: Sequence[tuple[int, float, str]]) -> None:
    for direction, marker, color in (("up", "^", "#2ca02c"), ("down", "v", "#d62728")):
        chosen = [(step, value) for step, value, way in jumps if way == direction]
        if chosen:
            steps, values = zip(*chosen)
            style = {"ls": "none", "marker": marker, "ms": 5, "mec": "black", "mew": 0.4}
            ax.plot(steps, values, color=color, **style)


def label(text: str) -> str:
    r"""Return ``text`` as matplotlib must be given it to draw it literally: no mathtext, no controls.

    Example:
        >>> label("$\\alpha$")
        '\\$\\alpha\\$'
    """
    return literal(text).replace("$", "\\$")


def _style(ax, xlim: tuple[float, float], ylabel: str) -> None:
    ax.set_xlim(*xlim)
    ax.set_ylabel(label(ylabel), fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.spines[["top", "right"]].set_visible(False)


def _extent(a: Curve, b: Curve) -> tuple[float, float]:
    steps = np.concatenate([a.steps, b.steps])
    if steps.size == 0:
        return (0.0, 1.0)
    return (float(steps.min()), float(max(steps.max(), steps.min() + 1)))


def _spans_decades(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 1 and finite.max() > 30 * finite.min()


def _tick_labels(layers: Sequence[str]) -> list[str]:
    return [name if len(name) <= MAX_LABEL else "…" + name[1 - MAX_LABEL :] for name in layers]
