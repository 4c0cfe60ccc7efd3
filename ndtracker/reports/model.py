"""The report's data model: plain records of a run's series, tables and comparisons.

Nothing here loads, analyses or draws: :mod:`~ndtracker.reports.build` fills these records from the
logs; the views (:mod:`~ndtracker.reports.terminal`, :mod:`~ndtracker.reports.html`) render them and
are imported only when a record is rendered, so the model never depends on a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console, RenderableType
from rich.progress import Progress

__all__ = ["Series", "Report", "Comparison"]


class _Rendered:
    """What reports and comparisons share: print to the terminal, render to one HTML page.

    A subclass gives its terminal view (``_view``), its page title (``_title``) and its page
    sections (``_sections``).
    """

    def render(self, console: Console | None = None) -> None:
        """Print the terminal view.

        Args:
            console: Where to print (default: a new ``rich.console.Console`` on stdout).
        """
        (console or Console()).print(self)

    def __rich__(self) -> RenderableType:
        """Return the terminal view as a rich renderable."""
        return self._view()

    def to_html(self, path: str | Path | None = None, *, progress: bool = False) -> str:
        """Render as one self-contained HTML page (inline SVG and CSS, no scripts, no network).

        Args:
            path: File to write the page to (default: only return it).
            progress: Show a transient progress bar on stderr while drawing (default False).

        Returns:
            The HTML page.
        """
        from ndtracker.reports import html, terminal

        with terminal.progress_bar(progress) as bar:
            sections = self._sections(bar)
        return html.write_page(self._title(), sections, path)

    def _repr_html_(self) -> str:
        """Render inline in a notebook: the page's sections, styled without touching the page."""
        from ndtracker.reports import notebook

        return notebook.fragment(self)

    def _view(self) -> RenderableType:
        raise NotImplementedError

    def _title(self) -> str:
        raise NotImplementedError

    def _sections(self, bar: Progress) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Series:
    """One layer's metric in one space over the sampled steps of a run.

    Attributes:
        layer: Layer name, as in ``model.named_modules()``.
        space: ``"activation"`` or ``"weight"``.
        steps: Sampled training steps, shape (n,), int64, increasing.
        values: The metric at those steps, shape (n,), float64; NaN where not measured.
        loss: The loss logged at those steps, shape (n,), float64; NaN where not given.
        problems: (status, count) for samples whose status is not ``"ok"``.
        repeated: Rows dropped because their step was logged again later (rows of several ranks
            read together); the later row is kept.
    """

    layer: str
    space: str
    steps: np.ndarray
    values: np.ndarray
    loss: np.ndarray
    problems: tuple[tuple[str, int], ...] = ()
    repeated: int = 0


@dataclass(frozen=True, eq=False)
class Report(_Rendered):
    """The phase report of one run: what :func:`report` returns.

    ``render()`` prints the terminal summary, ``to_html(path)`` makes the HTML page.

    Attributes:
        run_dir: The run directory, as given.
        run: The run's info (``run_id``, ``started``, ``model``, ``options``, ``layers``, ...).
        run_ids: Every run id found in the directory, oldest first.
        metric: The metric reported.
        layers: The reported layers, in tracked (depth) order.
        summary: One row per layer and space: ``samples``, ``nonfinite``, ``first_step``,
            ``last_step``, ``first``, ``last``, ``min``, ``max`` of the metric, and the numbers of
            ``phases`` and ``jumps``.
        phases: One row per phase: ``layer``, ``space``, ``metric``, ``start_step``, ``end_step``
            (inclusive: the phase's last sampled step), ``kind`` (``collapse``, ``expansion`` or
            ``stabilization``), ``samples``, ``start_level`` and ``end_level`` (the smoothed level,
            :func:`ndtracker.detect.smooth_level`, where the phase starts and ends), ``change``
            (end minus start level) and ``relative_change`` (over the start level): what the label
            is about.
        jumps: One row per jump: ``layer``, ``space``, ``metric``, ``step`` (first step at the new
            level), ``direction`` (``up`` or ``down``), ``size`` (signed shift), ``relative_size`` (over the level before), ``z`` (its
            significance), ``before`` and ``after`` (levels either side).
        series: The series the tables were computed from, for plotting.
        notes: Warnings worth showing with the report (non-finite samples, other runs).
        tunnel: Per sampled step and space, the tunnel onset over depth: ``step``, ``space``,
            ``metric``, ``onset_index`` (0-based among the reported layers, null: no tunnel),
            ``onset_layer``, and where linear-probe accuracy stops rising over depth
            (``probe_saturation_index``, ``probe_saturation_layer``; null without probes). See
            :mod:`ndtracker.detect.depth`.
        correlations: Per layer and space, Spearman and Pearson correlation of the metric with
            the loss and with the weight-gradient norm (``samples``, ``spearman_loss``,
            ``pearson_loss``, ``grad_samples``, ``spearman_grad_norm``, ``pearson_grad_norm``).
        diagnostics: Conditions read from the curves (:mod:`ndtracker.reports.diagnostics`):
            ``condition``, ``space``, ``metric``, ``layers``, ``first_step``, ``last_step``,
            ``meaning``.
        similarity: The run's ``similarity`` table (CKA of layer pairs; empty unless the run
            used ``similarity=True``).
        classes: The run's class geometry (the ``classes`` table: ``step``, ``layer``,
            ``classes``, ``skipped_classes``, ``nc1``, ``radius``, ``dimension``,
            ``center_alignment``, ``axes_alignment``, ``ncc_accuracy``, ``rows``, ``status``),
            reported layers only, by depth then step; empty when no labels were passed.
        condensation: ``step``, ``layer``, ``condensation``, ``directions`` of the weight rows
            (``Tracker(..., condensation=True)``); empty otherwise.
        class_phases: Phases of each layer's class statistics and condensation columns:
            ``layer``, ``statistic``, ``start_step``, ``end_step``, ``kind``, ``samples``,
            ``change``, ``relative_change`` (the same detector as ``phases``).
        rank: The rank whose rows were read (a ``ranks="all"`` run: each rank wrote its own), or
            None for a run with one set of rows.
    """

    run_dir: str
    run: dict[str, Any]
    run_ids: tuple[str, ...]
    metric: str
    layers: tuple[str, ...]
    summary: pd.DataFrame
    phases: pd.DataFrame
    jumps: pd.DataFrame
    series: tuple[Series, ...]
    notes: tuple[str, ...] = ()
    tunnel: pd.DataFrame = field(default_factory=pd.DataFrame)
    correlations: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)
    classes: pd.DataFrame = field(default_factory=pd.DataFrame)
    condensation: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_phases: pd.DataFrame = field(default_factory=pd.DataFrame)
    rank: int | None = None

    @property
    def run_id(self) -> str:
        """The reported run's id."""
        return str(self.run.get("run_id", ""))

    def __repr__(self) -> str:
        return (
            f"Report(run_id={self.run_id!r}, metric={self.metric!r}, layers={len(self.layers)}, "
            f"phases={len(self.phases)}, jumps={len(self.jumps)})"
        )

    @property
    def loss(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (steps, loss) of the sampled steps with a finite loss, from the fullest series."""
        if not self.series:
            return np.zeros(0, np.int64), np.zeros(0)
        best = max(self.series, key=lambda s: int(np.isfinite(s.loss).sum()))
        keep = np.isfinite(best.loss)
        return best.steps[keep], best.loss[keep]

    def plot(self, layer: str, space: str | None = None, *, ax: Any = None) -> Any:
        """Draw one layer's metric over the steps, phases shaded and jumps marked.

        Args:
            layer: A layer of :attr:`layers`.
            space: ``"activation"`` or ``"weight"`` (default: the first the layer has).
            ax: Matplotlib axes to draw on (default: a new figure's).

        Returns:
            The ``matplotlib.figure.Figure`` drawn on.

        Raises:
            ValueError: ``layer`` has no series (in ``space``) in this report.
        """
        from ndtracker.reports import notebook

        return notebook.plot(self, layer, space, ax=ax)

    def _view(self) -> RenderableType:
        from ndtracker.reports import terminal

        return terminal.report_view(self)

    def _title(self) -> str:
        return f"ndtracker report: {self.run_id}"

    def _sections(self, bar: Progress) -> list[str]:
        from ndtracker.reports import html

        return html.report_sections(self, bar)


@dataclass(frozen=True, eq=False)
class Comparison(_Rendered):
    """Two runs side by side: the same metric on the layers both tracked.

    ``render()`` prints the table, ``to_html(path)`` makes a page with the curves overlaid.

    Attributes:
        a: The first run's report, restricted to the common layers.
        b: The second run's report, restricted to the common layers.
        layers: Layers present in both runs, in the first run's depth order.
        table: One row per layer and space: ``first_a``, ``last_a``, ``first_b``, ``last_b``,
            ``phases_a``, ``phases_b`` (the phase kinds in order, joined by ``" > "``).
    """

    a: Report
    b: Report
    layers: tuple[str, ...]
    table: pd.DataFrame

    def __repr__(self) -> str:
        return f"Comparison(a={self.a.run_id!r}, b={self.b.run_id!r}, layers={len(self.layers)})"

    def _view(self) -> RenderableType:
        from ndtracker.reports import terminal

        return terminal.comparison_view(self)

    def _title(self) -> str:
        return f"ndtracker compare: {self.a.run_id} vs {self.b.run_id}"

    def _sections(self, bar: Progress) -> list[str]:
        from ndtracker.reports import html

        return html.comparison_sections(self, bar)
