"""The HTML sections of class geometry and condensation: figures (inline SVG) and phase tables.

Imported only when a page is made (it draws with matplotlib through
:mod:`~ndtracker.reports.figures`). Takes the finished tables of a report
(:mod:`~ndtracker.reports.classes`) and returns HTML text.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from ndtracker.reports import figures
from ndtracker.reports.classes import depth_profile
from ndtracker.reports.text import display_name

__all__ = ["class_sections"]

Table = Callable[[pd.DataFrame], str]
_ALIGNMENT = (("center_alignment", "centre alignment"), ("axes_alignment", "axes alignment"),
              ("ncc_accuracy", "NCC accuracy"))  # fmt: skip
_PANEL_COLUMNS = 4


def class_sections(
    classes: pd.DataFrame, condensation: pd.DataFrame, phases: pd.DataFrame, layers: Sequence[str],
    table: Table, xlim: tuple[float, float],
) -> list[str]:
    """The class-geometry and condensation sections of a report page (none for empty tables).

    Args:
        classes, condensation, phases: The report's ``classes``, ``condensation`` and
            ``class_phases`` tables.
        layers: The report's layers in depth order.
        table: Renders a DataFrame as an HTML table.
        xlim: The page's step range.
    """
    parts: list[str] = []
    if len(classes):
        parts += _class_section(classes, phases, layers, table, xlim)
    if len(condensation):
        parts += _condensation_section(condensation, phases, layers, table, xlim)
    return parts


def _class_section(classes, phases, layers, table, xlim) -> list[str]:
    present = [layer for layer in layers if (classes["layer"] == layer).any()]
    parts = ["<h2>Class geometry</h2>", _figure(
        _trajectories(classes, present),
        "Class-manifold radius (spread over centre norm) against dimension (participation ratio), "
        "mean over classes, per layer; colour runs from the first sampled step (dark) to the last.",
    ), _figure(
        _curves(classes, present, _ALIGNMENT, xlim, "class-align"),
        "Alignment of class centres and of class principal axes (mean |cos| over class pairs), "
        "and nearest-class-centre accuracy, on the step axis; colour by depth.",
    )]  # fmt: skip
    profile = depth_profile(classes, present)
    if not profile.empty:
        parts.append(_figure(_depth(profile), "NC1 = tr(Σ_W Σ_B⁺)/C over depth at a few sampled steps "
                             "(log scale; lower: more collapsed)."))  # fmt: skip
    return parts + _phase_table(phases, ("nc1", "radius", "dimension", *(n for n, _ in _ALIGNMENT)), table)


def _condensation_section(condensation, phases, layers, table, xlim) -> list[str]:
    present = [layer for layer in layers if (condensation["layer"] == layer).any()]
    panels = (("condensation", "pairs |cos| ≥ 0.9"), ("directions", "distinct directions"))
    svg = _curves(condensation, present, panels, xlim, "condense")
    parts = ["<h2>Condensation</h2>", _figure(
        svg, "Fraction of neuron pairs whose input-weight vectors (bias included) are aligned "
        "(|cos| ≥ 0.9), and the effective number of distinct directions (participation ratio "
        "of the cosine matrix), per layer; colour by depth.",
    )]  # fmt: skip
    return parts + _phase_table(phases, ("condensation", "directions"), table)


def _phase_table(phases: pd.DataFrame, statistics: Sequence[str], table: Table) -> list[str]:
    rows = phases[phases["statistic"].isin(statistics)]
    if rows.empty:
        return []
    shown = rows.assign(layer=rows["layer"].map(display_name))
    return [f"<h3>Phases ({len(rows)})</h3>", table(shown)]


def _trajectories(classes: pd.DataFrame, layers: Sequence[str]) -> str:
    columns = min(_PANEL_COLUMNS, len(layers))
    rows = -(-len(layers) // columns)
    fig = Figure(figsize=(figures.WIDTH, 0.6 + 2.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    low, high = classes["step"].min(), max(classes["step"].max(), classes["step"].min() + 1)
    for ax, layer in zip(axes, layers):
        rows_of = classes[classes["layer"] == layer]
        x, y = rows_of["dimension"].to_numpy(float), rows_of["radius"].to_numpy(float)
        ax.plot(x, y, color="#bbbbbb", lw=0.8, zorder=1)
        ax.scatter(x, y, c=rows_of["step"], cmap="viridis", vmin=low, vmax=high, s=9, zorder=2)
        ax.set_title(display_name(layer), fontsize=8, loc="left", family="monospace")
        ax.tick_params(labelsize=7)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel("dimension", fontsize=8)
    fig.supylabel("radius", fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / (0.6 + 2.2 * rows) + 0.05, top=0.93, hspace=0.45)
    return figures.to_svg(fig, "class-trajectory")


def _curves(frame, layers, panels, xlim, salt) -> str:
    height = 0.8 + 1.5 * len(panels)
    fig = Figure(figsize=(figures.WIDTH, height))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colors = _depth_colors(len(layers))
    for ax, (column, label) in zip(axes, panels):
        for color, layer in zip(colors, layers):
            rows = frame[frame["layer"] == layer]
            shown = figures.thin(rows["step"].to_numpy(np.int64), rows[column].to_numpy(float))
            ax.plot(shown.steps, shown.values, color=color, lw=1, label=display_name(layer))
        ax.set_xlim(*xlim)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.subplots_adjust(left=figures.LEFT, right=figures.RIGHT - 0.08, bottom=0.45 / height,
                        top=1 - 0.3 / height, hspace=0.25)  # fmt: skip
    axes[-1].set_xlabel("step", fontsize=8)
    return figures.to_svg(fig, salt)


def _depth(profile: pd.DataFrame) -> str:
    fig = Figure(figsize=(figures.WIDTH, 2.8))
    ax = fig.subplots()
    depth = np.arange(profile.shape[1])
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(profile)))
    for color, (step, values) in zip(colors, profile.iterrows()):
        ax.plot(depth, np.clip(values.to_numpy(float), 1e-12, None), marker="o", ms=3, color=color,
                label=f"step {step}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(depth, [display_name(name)[: figures.MAX_LABEL] for name in profile.columns],
                  fontsize=7, rotation=30, ha="right")  # fmt: skip
    ax.set_ylabel("NC1", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=figures.LEFT, right=figures.RIGHT, bottom=0.3, top=0.95)
    return figures.to_svg(fig, "class-depth")


def _depth_colors(count: int) -> list:
    return list(colormaps["viridis"](np.linspace(0, 0.9, max(count, 1))))


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
