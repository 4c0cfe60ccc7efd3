"""Reports from the logs alone: build, analyse, and render to the terminal or one HTML page.

Torch-free. :func:`report` builds a :class:`Report` of one run, :func:`compare` a
:class:`Comparison` of two; both render with ``render()`` (terminal) and ``to_html()`` (a page).
"""

from __future__ import annotations

from ndtracker.reports.build import report
from ndtracker.reports.comparison import compare
from ndtracker.reports.model import Comparison, Report, Series

__all__ = ["report", "compare", "Report", "Comparison", "Series"]
