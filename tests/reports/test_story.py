"""The report's story: one sentence per main change, measured on the series, with the loss."""

from __future__ import annotations

import numpy as np
import pytest

import ndtracker
from ndtracker.reports import story
from report_runs import STEPS, noisy, write

def test_a_collapse_is_told_with_its_steps_levels_and_the_loss(tmp_path):
    write(tmp_path, {"fc1": noisy(np.where(STEPS < 200, 20 - 15 * STEPS / 200, 5.0)), "fc2": noisy(np.full(STEPS.size, 8.0), 1)})
    rep = ndtracker.report(tmp_path)
    found = story.findings(rep)
    assert [(f.layer, f.kind) for f in found] == [("fc1", "collapse")]
    f = found[0]
    assert f.start_step <= 20 and 180 <= f.end_step <= 260
    assert f.first > 15 and f.last < 7.5  # edge medians of a phase that spans most of the ramp
    assert f.relative_change == pytest.approx(f.last / f.first - 1)
    assert f.loss_first > f.loss_last > 0
    (line,) = story.story_lines(rep)
    assert line.startswith("fc1 (Linear 64×32), activation: collapsed over steps ")
    assert f"stable_rank {f.first:.4g} → {f.last:.4g} ({f.relative_change:+.0%}); loss 3 → " in line


def test_a_flat_run_says_nothing_changed(tmp_path):
    write(tmp_path, {"fc1": noisy(np.full(STEPS.size, 8.0))})
    assert story.story_lines(ndtracker.report(tmp_path)) == [
        "No layer collapsed or expanded: every stable_rank curve stayed level within its noise."]


def test_largest_changes_come_first_and_the_story_is_capped(tmp_path):
    curves = {f"l{i}": noisy(np.where(STEPS < 300, 10 + (i + 1) * STEPS / 100, 10 + 3 * (i + 1)), i) for i in range(15)}
    write(tmp_path, curves)
    found = story.findings(ndtracker.report(tmp_path))
    assert len(found) == story.MAX_FINDINGS
    changes = [abs(f.relative_change) for f in found]
    assert changes == sorted(changes, reverse=True) and found[0].layer == "l14"
    assert all(f.kind == "expansion" for f in found)


def test_layer_labels_use_the_run_metadata(tmp_path):
    write(tmp_path, {"fc1": noisy(np.full(STEPS.size, 8.0))}, layers_info=[{"name": "fc1", "type": "Conv2d", "weight_shape": [16, 3, 3, 3]}])
    rep = ndtracker.report(tmp_path)
    assert story.layer_label(rep, "fc1") == "fc1 (Conv2d 16×3×3×3)"
    assert story.layer_label(rep, "other") == "other"
    assert story.layer_label(rep, "") == "(model)"


def test_the_glossary_explains_every_phase_kind_and_jumps():
    assert set(story.GLOSSARY) == {"collapse", "expansion", "stabilization", "jump"}


def test_cut_heatmap_names_carry_their_full_name_on_hover():
    from ndtracker.reports import figures

    long = "encoder.layer.11.attention.self.query"
    svg = figures.heatmap_figure([long, "fc"], np.random.default_rng(0).random((2, 5)), np.arange(6.0), "m", "h")
    assert f"<title>{long}</title>" in svg and "<title>fc</title>" not in svg


@pytest.mark.parametrize("every, words", [
    (5, "every 5"),
    ([[0, 1], [50, 5]], "every 1 step until 49, then every 5"),
    ([[0, 2], [100, 5], [1000, 10]], "every 2 steps until 99, every 5 until 999, then every 10"),
    ("odd", "every odd"),  # a hand-edited run.json is shown as it is
    ([[0, 1], [50]], "every [[0, 1], [50]]"),
])  # fmt: skip
def test_an_every_schedule_is_told_in_words(every, words):
    from ndtracker.reports.text import every_words

    assert every_words(every) == words


def test_the_report_header_tells_a_schedule_in_words(tmp_path):
    from ndtracker.reports.text import info_lines
    from ndtracker.store import RunWriter

    steps = [*range(0, 50), *range(50, 300, 5)]
    writer = RunWriter(tmp_path, run_info={"options": {"every": [[0, 1], [50, 5]]}, "layers": []})
    writer.append([{"step": s, "layer": "fc1", "space": "activation", "stable_rank": 8.0 + 0.01 * (s % 3), "rows": 64,
                    "cols": 64, "estimator": "exact", "status": "ok", "loss": 1.0, "wall_time": 1.7e9} for s in steps])
    writer.close()
    lines = dict(info_lines(ndtracker.report(tmp_path)))
    assert lines["steps"] == f"0-295, every 1 step until 49, then every 5, {len(steps)} samples"


def test_the_story_names_the_largest_jumps_with_their_relative_size(tmp_path):
    up = np.where(STEPS < 500, 8.0, 12.0)  # +50 % at step 500
    down = np.where(STEPS < 300, 10.0, 9.0)  # -10 % at step 300
    ramp = np.where(STEPS < 200, 20 - 15 * STEPS / 200, 5.0)  # a collapse, so the story has a finding
    write(tmp_path, {"fc1": noisy(up), "fc2": noisy(down, 1), "fc3": noisy(ramp, 2)})
    rep = ndtracker.report(tmp_path)
    lines = story.jump_lines(rep)
    assert lines[0].startswith("fc1 (Linear 64×32), activation: largest stable_rank jump ↑50% at step 500")
    assert lines[1].startswith("fc2 (Linear 64×32), activation: largest stable_rank jump ↓10% at step 300")
    assert story.story_lines(rep)[-len(lines):] == lines  # after the phases of change
    assert story.jump_lines(ndtracker.report(_flat(tmp_path / "flat"))) == []


def _flat(folder):
    write(folder, {"fc1": noisy(np.full(STEPS.size, 8.0))})
    return folder
