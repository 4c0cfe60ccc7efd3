"""Reporting: tables in training steps, the terminal golden, the HTML page, figures, bad runs.

Regenerate the golden files with ``NDTRACKER_UPDATE_GOLDEN=1 python -m pytest tests/reports/test_reporting.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from ndtracker import reports as reporting
from ndtracker.reports import analysis, figures
from ndtracker.errors import NdtrackerError, RunNotFoundError, SchemaError
from ndtracker.store import RunWriter

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NDTRACKER_UPDATE_GOLDEN") == "1"
LAYERS = ("encoder.0", "encoder.2", "head")
STEPS = np.arange(0, 1000, 5)
NAN_STEP = 250  # head's activation is not finite here
# what would make a page fetch something or run code (url(#id) is a local reference, so allowed)
EXTERNAL = re.compile(r"<script|<link|<iframe|@import|(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?(?!#)", re.I)


def series(layer: str, space: str) -> np.ndarray:
    """The synthetic metric: a collapse, a jump, a late expansion, flat or drifting weights."""
    noise = 0.05 * np.random.RandomState(len(layer) * 7 + len(space)).randn(STEPS.size)
    if space == "weight":
        return {"encoder.0": 30.0 + 0 * STEPS, "encoder.2": 30 - STEPS / 500}.get(layer, 4.0 + 0 * STEPS) + noise
    if layer == "encoder.0":
        return 20 - 14 * np.minimum(STEPS / 300, 1) + noise
    if layer == "encoder.2":
        return np.where(STEPS >= 500, 12.0, 8.0) + noise
    values = 5 + 4 * np.clip((STEPS - 600) / 395, 0, 1) + noise
    values[STEPS == NAN_STEP] = np.nan
    return values


def rows(layer: str, space: str) -> list[dict]:
    out = []
    for step, value in zip(STEPS, series(layer, space)):
        status = "ok" if np.isfinite(value) else "nonfinite"
        out.append({
            "step": int(step), "layer": layer, "space": space, "stable_rank": float(value),
            "participation_ratio": float(value) * 1.5, "rows": 64, "cols": 64, "estimator": "exact",
            "loss": float(2 * np.exp(-step / 300) + 0.1), "wall_time": 1.7e9 + float(step), "status": status,
        })  # fmt: skip
    return out


def write_run(folder: Path, layers=LAYERS, metrics=("stable_rank", "participation_ratio")) -> str:
    info = {
        "model": "Synthetic", "ndtracker_version": "0.0.test",
        "options": {"every": 5, "metrics": list(metrics)},
        "layers": [{"name": name, "type": "Linear"} for name in layers],
    }  # fmt: skip
    writer = RunWriter(folder, run_info=info)
    writer.append([row for layer in layers for space in ("activation", "weight") for row in rows(layer, space)])
    writer.close()
    return writer.run_id


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    write_run(folder)
    return folder


@pytest.fixture(scope="module")
def rep(run) -> reporting.Report:
    return reporting.report(run)


# ------------------------------------------------------------------------------ tables


def test_summary_matches_the_logged_values(rep):
    assert rep.layers == LAYERS and len(rep.summary) == 6
    for row in rep.summary.itertuples():
        values = series(row.layer, row.space)
        finite = values[np.isfinite(values)]
        assert (row.first, row.last) == (finite[0], finite[-1])
        assert (row.min, row.max) == (finite.min(), finite.max())
        assert (row.samples, row.nonfinite) == (200, int(np.isnan(values).sum()))
        assert (row.first_step, row.last_step) == (0, 995)
    assert rep.summary.set_index(["layer", "space"]).loc[("head", "activation"), "nonfinite"] == 1


def test_series_are_cut_the_same_from_an_irregular_layout(tmp_path):
    writer = RunWriter(tmp_path, run_info={"options": {"every": 5, "metrics": ["stable_rank"]}})
    every = [row for layer in LAYERS for space in ("activation", "weight") for row in rows(layer, space)]
    sparse = [row for row in every if not (row["layer"] == "head" and row["step"] % 10)]  # head: every 10
    for start in (500, 0):  # later steps flushed first
        writer.append([row for row in sparse if start <= row["step"] < start + 500])
        writer.flush()
    writer.close()
    irregular = reporting.report(tmp_path)
    for item in irregular.series:
        expected = series(item.layer, item.space)[:: 2 if item.layer == "head" else 1]
        np.testing.assert_array_equal(item.values, expected)
        assert np.array_equal(item.steps, STEPS[:: 2 if item.layer == "head" else 1])
    assert irregular.layers == LAYERS and (irregular.summary["samples"].to_numpy() == [200] * 4 + [100] * 2).all()


def test_jumps_are_in_training_steps(rep):
    jumps = rep.jumps[(rep.jumps.layer == "encoder.2") & (rep.jumps.space == "activation")]
    assert jumps[["step", "direction"]].to_dict("records") == [{"step": 500, "direction": "up"}]
    assert jumps["size"].iloc[0] == pytest.approx(4.0, abs=0.2)
    assert set(rep.jumps["metric"]) == {"stable_rank"} and set(rep.jumps["run_id"]) == {rep.run_id}
    assert (rep.jumps["step"] % 5 == 0).all()


def test_phases_cover_each_series_in_steps(rep):
    for (layer, space), phases in rep.phases.groupby(["layer", "space"]):
        assert phases["start_step"].iloc[0] == 0 and phases["end_step"].iloc[-1] == 995
        assert (phases["start_step"].iloc[1:].to_numpy() == phases["end_step"].iloc[:-1].to_numpy() + 5).all()
        assert phases["samples"].sum() == 200
    assert kind_at(rep, "encoder.0", 150) == "collapse" and kind_at(rep, "encoder.0", 800) == "stabilization"
    assert kind_at(rep, "head", 300) == "stabilization" and kind_at(rep, "head", 900) == "expansion"


def kind_at(rep: reporting.Report, layer: str, step: int, space: str = "activation") -> str:
    phases = rep.phases[(rep.phases.layer == layer) & (rep.phases.space == space)]
    return phases[(phases.start_step <= step) & (step <= phases.end_step)].kind.item()


def test_nonfinite_samples_are_noted(rep):
    assert any("head (activation): 1 of 200 samples not finite" in note for note in rep.notes)


def test_layers_pattern_list_and_space_select(run):
    assert reporting.report(run, layers="encoder.*").layers == ("encoder.0", "encoder.2")
    assert reporting.report(run, layers=["head", "encoder.0"]).layers == ("encoder.0", "head")
    weights = reporting.report(run, space="weight")
    assert set(weights.summary.space) == {"weight"} and set(weights.phases.space) == {"weight"}


def test_worker_processes_give_the_same_tables(run, monkeypatch):
    monkeypatch.setattr(analysis, "PARALLEL_MIN_SAMPLES", 0)
    serial, parallel = reporting.report(run), reporting.report(run, workers=2)
    for name in ("summary", "phases", "jumps"):
        pd.testing.assert_frame_equal(getattr(serial, name), getattr(parallel, name))
    with pytest.raises(ValueError, match="workers must be a positive integer or None, got 0"):
        reporting.report(run, workers=0)


def test_other_metric_and_latest_run_by_default(tmp_path):
    first = write_run(tmp_path)
    second = write_run(tmp_path, layers=("head",))
    assert reporting.report(tmp_path).run_id == second
    older = reporting.report(tmp_path, run_id=first, metric="participation_ratio")
    assert older.layers == LAYERS and older.summary.iloc[0]["first"] == pytest.approx(1.5 * series("encoder.0", "activation")[0])
    assert any(first in note for note in reporting.report(tmp_path).notes)


# ------------------------------------------------------------------------------ terminal


def test_terminal_summary_matches_golden(rep, run):
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    rep.render(console)
    text = console.export_text().replace(rep.run_id, "<run_id>").replace(f"({run.name})", "(<run_dir>)")
    text = text.replace(str(rep.run["started"]), "<started>")
    check_golden("report_width100.txt", "\n".join(line.rstrip() for line in text.splitlines()) + "\n")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), "if intended: NDTRACKER_UPDATE_GOLDEN=1 pytest ..."


# ------------------------------------------------------------------------------ HTML


def test_html_is_self_contained_and_names_every_layer(rep, tmp_path):
    page = rep.to_html(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2 + 3 + 1  # heatmaps, layers, loss
    assert all(re.search(rf">{re.escape(layer)}( \([^)]*\))?</h3>", page) for layer in LAYERS)
    assert "data:image/png;base64," in page  # the heatmaps' raster is inline
    assert not EXTERNAL.search(page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', ""))
    assert "collapse" in page and "<table" in page


def test_html_is_deterministic(rep):
    assert rep.to_html() == rep.to_html()


def test_summary_does_not_depend_on_where_the_run_lies(tmp_path, rep):
    deep = tmp_path / ("x" * 120) / "synthetic0"
    deep.mkdir(parents=True)
    write_run(deep)
    texts = []
    for one in (rep, reporting.report(deep)):
        console = Console(width=100, record=True, color_system=None, file=io.StringIO())
        one.render(console)
        texts.append(console.export_text().replace(one.run_id, "<run_id>").replace(str(one.run["started"]), "<started>"))
    assert texts[0] == texts[1] and str(tmp_path) not in texts[1]


def test_a_model_tracked_as_a_whole_is_shown_as_model(tmp_path):
    write_run(tmp_path, layers=("", "head"))
    model = reporting.report(tmp_path)
    assert model.layers == ("", "head") and "" in set(model.phases.layer)  # the data keeps the name
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    model.render(console)
    text = console.export_text()
    assert text.count("│ (model) ") == 2 and "│ head " in text
    page = model.to_html()
    assert re.search(r">\(model\)( \([^)]*\))?</h3>", page) and '<a href="#layer-0">(model)</a>' in page
    assert re.search(r"<td>\(model\)( \([^)]*\))?</td>", page)
    assert "<td></td>" not in page


def test_thin_keeps_extremes_and_bounds_points():
    steps = np.arange(100_000) * 5
    values = np.sin(np.arange(100_000) / 1000.0)
    values[31_337] = 50.0
    values[77_777] = np.nan
    curve = figures.thin(steps, values, max_points=1000)
    assert curve.steps.size == 1000 and np.all(np.diff(curve.steps) >= 0)
    assert np.nanmax(curve.values) == 50.0 and np.nanmin(curve.values) == np.nanmin(values)
    short = figures.thin(steps[:10], values[:10])
    assert short.steps is steps[:10] or np.array_equal(short.steps, steps[:10])


def test_heatmap_grid_is_the_mean_per_bin():
    steps = np.array([0, 5, 10, 15, 20])
    values = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    grid = figures.heatmap_grid(steps, values, np.array([0.0, 10.0, 20.0, 30.0]))
    np.testing.assert_allclose(grid, [2.0, 5.0, 7.0])


# ------------------------------------------------------------------------------ bad runs


def test_unknown_metric_and_space():
    with pytest.raises(ValueError, match=r"metric must be one of stable_rank.*got 'rank'"):
        reporting.report("anywhere", metric="rank")
    with pytest.raises(ValueError, match=r"space must be one of activation, weight; got 'grad'"):
        reporting.report("anywhere", space="grad")


def test_missing_or_empty_directory(tmp_path):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        reporting.report(tmp_path / "nope")
    with pytest.raises(RunNotFoundError, match="holds no ndtracker run"):
        reporting.report(tmp_path)


def test_run_without_rows(tmp_path):
    RunWriter(tmp_path, run_info={"model": "Empty"}).close()
    with pytest.raises(NdtrackerError, match="has no rows: it logged nothing"):
        reporting.report(tmp_path)


def test_unknown_run_id(run):
    with pytest.raises(RunNotFoundError, match=r"run_id='nope' is not in"):
        reporting.report(run, run_id="nope")


def test_layer_pattern_matching_nothing(run):
    with pytest.raises(ValueError, match=r"layers='decoder\.\*' matched no layer .* encoder\.0, encoder\.2, head"):
        reporting.report(run, layers="decoder.*")


def test_space_without_rows(tmp_path):
    writer = RunWriter(tmp_path, run_info={"options": {"metrics": ["stable_rank"]}})
    writer.append(rows("head", "weight"))
    writer.close()
    with pytest.raises(ValueError, match="space='activation': run .* has no rows in that space"):
        reporting.report(tmp_path, space="activation")


def test_metric_not_computed(run):
    with pytest.raises(ValueError, match="metric='effective_rank' was not computed .* stable_rank, participation_ratio"):
        reporting.report(run, metric="effective_rank")


def test_newer_schema(tmp_path):
    write_run(tmp_path)
    doc = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(SchemaError, match="newer"):
        reporting.report(tmp_path)


def test_foreign_parquet_file_is_skipped_with_a_warning(tmp_path):
    write_run(tmp_path)
    foreign = tmp_path / "metrics" / "notes.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign)
    with pytest.warns(RuntimeWarning, match=f"skipping {re.escape(str(foreign))}: it is not an ndtracker part"):
        rest = reporting.report(tmp_path)
    assert rest.layers == LAYERS and len(rest.summary) == 6


def test_damaged_part_is_skipped_with_a_warning(tmp_path):
    run_id = write_run(tmp_path)
    bad = tmp_path / "metrics" / f"part-{run_id}-999999.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(RuntimeWarning, match=re.escape(bad.name)):
        damaged = reporting.report(tmp_path)
    assert damaged.layers == LAYERS and len(damaged.summary) == 6


# ------------------------------------------------------------------------------ compare


def test_compare_overlays_the_common_layers(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", layers=("encoder.2", "head", "extra"))
    comparison = reporting.compare(tmp_path / "a", tmp_path / "b")
    assert comparison.layers == ("encoder.2", "head")
    assert set(comparison.table.layer) == {"encoder.2", "head"} and len(comparison.table) == 4
    row = comparison.table.set_index(["layer", "space"]).loc[("encoder.2", "activation")]
    assert row.last_a == row.last_b and "stabilization" in row.phases_a
    page = comparison.to_html()
    assert page.count("<svg") == 3 and "extra" not in page and not EXTERNAL.search(page.split("<svg")[0])


def test_compare_fits_80_columns_with_every_layer_whole(tmp_path):
    long_names = ("encoder.layers.0.self_attn", "encoder.layers.11.linear2", "head")
    write_run(tmp_path / "a", layers=long_names)
    write_run(tmp_path / "b", layers=long_names)
    console = Console(file=io.StringIO(), width=80, color_system=None)
    reporting.compare(tmp_path / "a", tmp_path / "b").render(console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "activation space" in text and "weight space" in text
    assert all(text.count(name) == 2 for name in long_names)  # one row per space, never folded
    assert text.count("phases") == 4  # both runs' phase columns in both tables


def test_compare_without_common_layers(tmp_path):
    write_run(tmp_path / "a", layers=("encoder.0",))
    write_run(tmp_path / "b", layers=("head",))
    with pytest.raises(ValueError, match="no layer in common"):
        reporting.compare(tmp_path / "a", tmp_path / "b")
