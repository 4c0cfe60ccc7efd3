"""Reports in notebooks: an inline fragment that restyles nothing outside it, rendered by nbclient too."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.figure import Figure

import ndtracker
from ndtracker.reports import notebook
from report_runs import STEPS, noisy, write


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nb")
    write(folder, {"fc1": noisy(np.where(STEPS < 200, 20 - 15 * STEPS / 200, 5.0)), "fc2": noisy(np.full(STEPS.size, 8.0), 1)})
    return ndtracker.report(folder)


def test_repr_html_is_a_scoped_fragment(rep):
    fragment = rep._repr_html_()
    assert fragment.startswith('<div class="ndtracker-report">') and fragment.endswith("</div>")
    assert not re.search(r"<(html|head|body)\b", fragment)
    style = re.search(r"<style>(.*?)</style>", fragment, re.S).group(1)
    selectors = [s.strip() for rule in re.findall(r"([^{}]+)\{", style) for s in rule.split(",")]
    assert selectors and all(s.startswith(".ndtracker-report") for s in selectors)
    assert "<svg" in fragment and "fc1" in fragment


def test_scoping_turns_body_into_the_scope_and_keeps_declarations():
    css = "body { color: red; }\nh1, td.num { margin: 0; }"
    assert notebook.scoped_css(css, "x") == ".x { color: red; }\n.x h1, .x td.num { margin: 0; }"


def test_a_comparison_renders_inline_too(rep, tmp_path):
    write(tmp_path, {"fc1": noisy(np.full(STEPS.size, 9.0), 3)})
    fragment = ndtracker.compare(rep.run_dir, tmp_path)._repr_html_()
    assert fragment.startswith('<div class="ndtracker-report">') and "fc1" in fragment


def test_plot_returns_a_figure_with_the_curve_phases_and_jumps(rep):
    fig = rep.plot("fc1")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    (line,) = ax.lines[:1]
    np.testing.assert_array_equal(line.get_xdata(), rep.series[0].steps)
    assert len(ax.patches) >= len(rep.phases[rep.phases.layer == "fc1"])
    with pytest.raises(ValueError, match=r"layer='nope' has no series in this report; its layers are: fc1, fc2"):
        rep.plot("nope")


def test_a_notebook_displays_the_report(rep, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import ndtracker\nndtracker.report({str(rep.run_dir)!r})")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    data = nb.cells[0].outputs[0]["data"]
    assert data["text/html"].startswith('<div class="ndtracker-report">')
