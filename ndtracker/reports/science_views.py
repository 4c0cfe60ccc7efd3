"""The report's depth and relation sections: tunnel, probes, correlations, diagnostics, CKA.

Rendering only, for both views: :func:`tunnel_lines` (text shared by both),
:func:`terminal_parts` (rich renderables) and :func:`html_parts` (HTML with figures from
:mod:`~ndtracker.reports.depth_figures`). Every part is left out when its table is empty, so a
run without the opt-in measurements shows what it showed before.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ndtracker.reports import science
from ndtracker.reports.text import display_name, number

if TYPE_CHECKING:  # pragma: no cover
    from ndtracker.reports.model import Report

__all__ = ["tunnel_lines", "terminal_parts", "html_parts", "profile_steps", "heatmap_steps"]

CORRELATION_SHOWN = ["spearman_loss", "pearson_loss", "spearman_grad_norm", "pearson_grad_norm"]


def tunnel_lines(rep: Report) -> list[str]:
    """One sentence per space on the tunnel at the last step, when it formed, and the probes.

    Only spaces worth a line: a tunnel at the last step, or probe results.
    """
    lines = []
    for space, rows in _by_space(rep.tunnel):
        last = rows.iloc[-1]
        if pd.isna(last.onset_index) and rows["probe_saturation_index"].isna().all():
            continue
        if pd.isna(last.onset_index):
            text = f"{space}: no tunnel at the last step ({int(last.step)})"
        else:
            formed = science.tunnel_formed(rep.tunnel, space)
            text = (f"{space}: tunnel from layer {display_name(last.onset_layer)} (depth "
                    f"{int(last.onset_index)}) at the last step; the tunnel formed by step {formed}")  # fmt: skip
        if last.probe_saturation_layer is not None and not pd.isna(last.probe_saturation_index):
            text += f"; probe accuracy stops rising at layer {display_name(last.probe_saturation_layer)}"
        lines.append(text)
    return lines


def _by_space(tunnel: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "space" not in tunnel or not len(tunnel):
        return []
    return [(space, rows.sort_values("step")) for space, rows in tunnel.groupby("space", sort=False)]


def _has_correlations(rep: Report) -> bool:
    """Whether to show the correlations: when the run logged gradient norms (the loss
    correlations alone stay in ``Report.correlations``, so a default report reads as before)."""
    table = rep.correlations
    return len(table) > 0 and bool(table["grad_samples"].gt(0).any())


# ------------------------------------------------------------------------------ terminal


def terminal_parts(rep: Report) -> list[RenderableType]:
    """The terminal's tunnel lines, correlation table and diagnostics (empty parts left out)."""
    parts: list[RenderableType] = []
    lines = tunnel_lines(rep)
    if lines:
        parts += [Text(), Text(f"depth ({rep.metric})", style="bold")] + [Text(f"  {line}") for line in lines]
    if _has_correlations(rep):
        parts += [Text(), _correlation_table(rep)]
    if len(rep.diagnostics):
        parts += [Text(), Text("diagnostics", style="bold")]
        parts += [Text(f"  {row.condition}, steps {row.first_step}-{row.last_step}: {row.meaning}", style="magenta")
                  for row in rep.diagnostics.itertuples()]  # fmt: skip
    return parts


def _correlation_table(rep: Report) -> Table:
    table = Table(title=f"correlation of {rep.metric} with the loss and the gradient norm",
                  title_justify="left")  # fmt: skip
    table.add_column("layer", overflow="fold")
    table.add_column("space")
    for name in ("ρ loss", "r loss", "ρ grad", "r grad"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rep.correlations.itertuples(index=False):
        table.add_row(display_name(row.layer), row.space, *(number(getattr(row, n)) for n in CORRELATION_SHOWN))
    return table


# ------------------------------------------------------------------------------ HTML


def html_parts(rep: Report, table_html) -> list[str]:
    """The page's depth section (map with onset, profiles, CKA heatmaps), correlations, diagnostics.

    The depth figures of a space are drawn when it has a tunnel at the last step or probe
    results; the correlations when the run logged gradient norms.

    Args:
        rep: The report.
        table_html: The page's table renderer (``html.html_table``).
    """
    parts: list[str] = []
    if tunnel_lines(rep):
        parts += _depth_section(rep)
    if len(rep.similarity):
        parts += _similarity_section(rep)
    if _has_correlations(rep):
        shown = rep.correlations.drop(columns=["metric"]).assign(layer=lambda f: f["layer"].map(display_name))
        parts += ["<h2>Correlations</h2>", table_html(shown)]
    if len(rep.diagnostics):
        rows = rep.diagnostics.assign(layers=rep.diagnostics["layers"].map(lambda names: ", ".join(names)))
        parts += [f"<h2>Diagnostics ({len(rows)})</h2>", table_html(rows.drop(columns=["metric"]))]
    return parts


def _depth_section(rep: Report) -> list[str]:
    from ndtracker.reports import depth_figures

    parts = ["<h2>Depth</h2>"] + [f"<p>{html.escape(line)}</p>" for line in tunnel_lines(rep)]
    for space, rows in _by_space(rep.tunnel):
        if pd.isna(rows["onset_index"].iloc[-1]) and rows["probe_saturation_index"].isna().all():
            continue  # nothing to mark: the overview heatmap already shows the metric over depth
        layers, steps, grid = science.depth_profile(rep.series, space)
        onset = rows.set_index("step")["onset_index"].reindex(steps)
        onset = np.array([np.nan if pd.isna(v) else float(v) for v in onset])
        saturation = rows.set_index("step")["probe_saturation_index"].reindex(steps)
        saturation = np.array([np.nan if pd.isna(v) else float(v) for v in saturation])
        names = [display_name(name) for name in layers]
        title = f"{rep.metric}, {space} space"
        svg = depth_figures.depth_map(names, steps, grid, onset, saturation, title, f"depth-{space}")
        parts.append(_figure(svg, "Metric over depth (rows, input side on top) and steps; the line marks the "
                                  "tunnel onset, dots where probe accuracy stops rising."))  # fmt: skip
        chosen = profile_steps(steps, science.tunnel_formed(rep.tunnel, space))
        columns = [int(np.searchsorted(steps, s)) for s in chosen]
        svg = depth_figures.depth_profiles(names, [(s, grid[:, c]) for s, c in zip(chosen, columns)],
                                           rep.metric, f"profile-{space}")  # fmt: skip
        parts.append(_figure(svg, f"Depth profile of {rep.metric} ({space}) at chosen steps."))
    return parts


def profile_steps(steps: np.ndarray, formed: int | None) -> list[int]:
    """The steps whose depth profile is drawn: first, a quarter in, when the tunnel formed, last."""
    if not steps.size:
        return []
    picks = [steps[0], steps[steps.size // 4]] + ([formed] if formed is not None else []) + [steps[-1]]
    return sorted({int(s) for s in picks})


def heatmap_steps(similarity: pd.DataFrame, formed: int | None) -> list[tuple[str, int]]:
    """The CKA heatmaps drawn: first step, the logged step nearest the tunnel's formation, last."""
    steps = np.unique(similarity["step"].to_numpy())
    picks = [("first step", int(steps[0]))]
    if formed is not None:
        picks.append(("tunnel formed", science.nearest_step(steps, formed)))
    picks.append(("last step", int(steps[-1])))
    return picks


def _similarity_section(rep: Report) -> list[str]:
    from ndtracker.reports import depth_figures

    layers = [layer for layer in rep.layers if layer in set(rep.similarity["layer_a"]) | set(rep.similarity["layer_b"])]
    formed = science.tunnel_formed(rep.tunnel, "activation") if len(rep.tunnel) else None
    panels = [(f"{label}: step {step}", science.cka_at(rep.similarity, step, layers))
              for label, step in heatmap_steps(rep.similarity, formed)]  # fmt: skip
    svg = depth_figures.cka_heatmaps([display_name(n) for n in layers], panels, "cka")
    caption = "Linear CKA between layers (activations on the same examples); 1 = the same representation."
    return ["<h2>Layer similarity</h2>", _figure(svg, caption)]


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
