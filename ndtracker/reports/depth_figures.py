"""Draw the depth figures: the depth x step map with the tunnel onset, depth profiles, CKA heatmaps.

Matplotlib on bare figures, returned as inline SVG by :func:`ndtracker.reports.figures.to_svg`;
imported only when a page with these sections is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ndtracker.reports import figures

__all__ = ["depth_map", "depth_profiles", "cka_heatmaps"]


def depth_map(
    layers: Sequence[str], steps: np.ndarray, grid: np.ndarray, onset: np.ndarray,
    saturation: np.ndarray, title: str, salt: str,
) -> str:  # fmt: skip
    """The metric per layer (rows) and sampled step (columns), the onset as a line.

    Args:
        layers: Layer names in depth order (L).
        steps: Sampled steps (n).
        grid: The metric, shape ``(L, n)``.
        onset: Onset index per step (NaN: none), shape ``(n,)``.
        saturation: Probe saturation index per step (NaN: none), shape ``(n,)``.
        title: The figure's title.
        salt: Distinct per figure of a page.
    """
    edges = _edges(steps)
    svg_height = min(1.3 + 0.16 * len(layers), 12.0)
    fig = Figure(figsize=(figures.WIDTH, svg_height))
    ax = fig.subplots()
    fig.subplots_adjust(left=figures.LEFT, right=figures.RIGHT, bottom=0.45 / svg_height, top=1 - 0.3 / svg_height)
    ax.pcolormesh(edges, np.arange(len(layers) + 1) - 0.5, grid, cmap="viridis", shading="flat")
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.step(steps, onset - 0.5, where="mid", color="#d62728", linewidth=1.5, label="tunnel onset")
    if np.isfinite(saturation).any():
        ax.plot(steps, saturation, ".", color="white", markersize=3, label="probe accuracy stops rising")
    ax.set_yticks(range(len(layers)), list(layers), fontsize=6.5)
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("step", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return figures.to_svg(fig, salt)


def _edges(steps: np.ndarray) -> np.ndarray:
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[1:] + steps[:-1]) / 2
    return np.r_[steps[0] - (mids[0] - steps[0]), mids, steps[-1] + (steps[-1] - mids[-1])]


def depth_profiles(layers: Sequence[str], profiles: Sequence[tuple[int, np.ndarray]], metric: str, salt: str) -> str:
    """The metric over depth, one line per chosen step."""
    fig = Figure(figsize=(figures.WIDTH, 3.0))
    ax = fig.subplots()
    fig.subplots_adjust(left=figures.LEFT, right=figures.RIGHT, bottom=0.3, top=0.92)
    for step, values in profiles:
        ax.plot(range(len(layers)), values, marker="o", markersize=3, label=f"step {step}")
    ax.set_xticks(range(len(layers)), list(layers), rotation=45, ha="right", fontsize=6.5)
    ax.set_ylabel(metric, fontsize=8)
    ax.legend(fontsize=7)
    return figures.to_svg(fig, salt)


def cka_heatmaps(layers: Sequence[str], panels: Sequence[tuple[str, np.ndarray]], salt: str) -> str:
    """One CKA heatmap (layers x layers, 0 to 1) per panel, side by side."""
    fig = Figure(figsize=(figures.WIDTH, figures.WIDTH / max(len(panels), 1) + 0.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, matrix) in zip(axes, panels):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(layers)), list(layers), rotation=90, fontsize=5.5)
        ax.set_yticks(range(len(layers)), list(layers), fontsize=5.5)
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    return figures.to_svg(fig, salt)
