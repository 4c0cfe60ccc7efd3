"""The ndtracker command: report, compare and demo end to end, exit codes, one-line errors, no torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import ndtracker
from ndtracker.cli import main
from ndtracker.store import RunWriter

LAYERS = ["0", "2", "4"]


def tracked_run(folder: Path, steps: int = 50, seed: int = 0, **options) -> str:
    """Train a small MLP for ``steps`` steps with the real Tracker; return the run id."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    with ndtracker.Tracker(model, every=5, log_dir=str(folder), **options) as tracker:
        for _ in range(steps):
            x = torch.randn(64, 12, generator=generator)
            loss = (model(x) - x[:, :3]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.step(loss=loss)
    return tracker.run_id


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tracked")
    tracked_run(folder, metrics=("stable_rank", "participation_ratio"))  # the report reads both
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ndtracker: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------ report


def test_report_prints_every_layer_and_writes_html(run, tmp_path, capsys):
    html = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "report", run, "--html", html, "--width", "120")
    assert code == 0, err
    assert all(re.search(rf"│ {re.escape(layer)}( \([^)]*\))? +│", out) for layer in LAYERS), out
    assert "activation space: stable_rank" in out and "weight space: stable_rank" in out
    assert f"HTML report: {html}" in out
    page = html.read_text(encoding="utf-8")
    assert page.count("<svg") == 1 + 2 + len(LAYERS)  # loss, two heatmaps, one per layer
    assert all(re.search(rf">{re.escape(layer)}( \([^)]*\))?</h3>", page) for layer in LAYERS)
    assert "<script" not in page and 'src="http' not in page and "<link" not in page


def test_report_options(run, capsys):
    code, out, _ = run_cli(capsys, "report", run, "--metric", "participation_ratio", "--layers", "[24]",
                           "--space", "weight", "--width", "100")  # fmt: skip
    assert code == 0
    assert "weight space: participation_ratio" in out and "activation space" not in out
    assert re.search(r"│ 2( \([^)]*\))? +│", out) and re.search(r"│ 4( \([^)]*\))? +│", out) and not re.search(r"│ 0( \([^)]*\))? +│", out)


def test_report_through_python_dash_m(run):
    done = subprocess.run(
        [sys.executable, "-m", "ndtracker", "report", str(run), "--width", "100"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and all(f"│ {layer} " in done.stdout for layer in LAYERS)


def test_report_path_never_imports_torch(run, tmp_path):
    code = (
        "import sys, ndtracker.cli\n"
        f"code = ndtracker.cli.main(['report', {str(run)!r}, '--html', {str(tmp_path / 'r.html')!r}])\n"
        f"code |= ndtracker.cli.main(['compare', {str(run)!r}, {str(run)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ errors


def write_rows(folder: Path, **info) -> RunWriter:
    writer = RunWriter(folder, run_info={"options": {"every": 5, "metrics": ["stable_rank"]}, **info})
    return writer


def test_missing_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path / "nope")
    assert code == 1 and "does not exist" in one_error_line(err)


def test_directory_without_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert code == 1 and "holds no ndtracker run" in one_error_line(err)


def test_run_without_rows(tmp_path, capsys):
    write_rows(tmp_path).close()
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert code == 1 and "has no rows: it logged nothing" in one_error_line(err)


def test_newer_schema(run, tmp_path, capsys):
    folder = tmp_path / "newer"
    folder.mkdir()
    doc = json.loads((run / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**doc, "schema_version": 99}))
    code, _, err = run_cli(capsys, "report", folder)
    assert code == 1 and "newer" in one_error_line(err)


def test_part_from_a_newer_schema(tmp_path, capsys):
    run_id = tracked_run(tmp_path, steps=10)
    [part] = sorted((tmp_path / "metrics").glob(f"part-{run_id}-*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"ndtracker_schema_version": b"99"}), part)
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert code == 1 and f"{part.name} was written with schema version 99" in one_error_line(err)


def test_foreign_parquet_file_is_named_and_the_rest_reported(run, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(run, folder)
    foreign = folder / "metrics" / "notes.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    code, out, err = run_cli(capsys, "report", folder, "--width", "100")
    assert code == 0 and all(f"│ {layer} " in out for layer in LAYERS)
    [warning] = err.strip().splitlines()
    assert warning.startswith("ndtracker: warning: skipping ") and foreign.name in warning


def test_errors_in_a_subprocess_are_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ndtracker", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "does not exist" in one_error_line(done.stderr)


def test_layer_pattern_matching_nothing(run, capsys):
    code, _, err = run_cli(capsys, "report", run, "--layers", "decoder.*")
    assert code == 1 and "layers='decoder.*' matched no layer" in one_error_line(err)


def test_metric_not_computed(run, capsys):
    code, _, err = run_cli(capsys, "report", run, "--metric", "energy90")
    assert code == 1 and "metric='energy90' was not computed" in one_error_line(err)


def test_unknown_run_id(run, capsys):
    code, _, err = run_cli(capsys, "report", run, "--run-id", "nope")
    assert code == 1 and "run_id='nope' is not in" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: verb"),
        (["report"], "the following arguments are required: RUN"),
        (["report", "x", "--metric", "rank"], "argument --metric: invalid choice: 'rank'"),
        (["report", "x", "--width", "0"], "argument --width: expected a positive integer, got '0'"),
        (["demo"], "the following arguments are required: --out"),
        (["summon", "x"], "argument verb: invalid choice: 'summon'"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in one_error_line(err)


def test_help_exits_0(capsys):
    code, out, _ = run_cli(capsys, "report", "--help")
    assert code == 0 and "--html FILE" in out


def test_damaged_part_is_named_and_the_rest_reported(tmp_path, capsys):
    run_id = tracked_run(tmp_path, steps=20)
    bad = tmp_path / "metrics" / f"part-{run_id}-999999.parquet"
    bad.write_bytes(b"PAR1 truncated")
    code, out, err = run_cli(capsys, "report", tmp_path)
    assert code == 0 and all(f"│ {layer} " in out for layer in LAYERS)
    warning = [line for line in err.splitlines() if line.startswith("ndtracker: warning: ")]
    assert len(warning) == 1 and bad.name in warning[0] and "Traceback" not in err


# ------------------------------------------------------------------------------ compare


def test_compare_two_runs(run, tmp_path, capsys):
    other = tmp_path / "other"
    other_id = tracked_run(other, steps=40, seed=1, layers=["2", "4"])
    html = tmp_path / "compare.html"
    code, out, err = run_cli(capsys, "compare", run, other, "--html", html, "--width", "140")
    assert code == 0, err
    assert other_id in out and re.search(r"│ 2( \([^)]*\))? +│", out) and not re.search(r"│ 0( \([^)]*\))? +│", out)
    page = html.read_text(encoding="utf-8")
    assert page.count("<svg") == 1 + 2 and re.search(r">4( \([^)]*\))?</h3>", page) and not re.search(r">0( \([^)]*\))?</h3>", page)


def test_compare_without_common_layers(run, tmp_path, capsys):
    other = tmp_path / "other"
    tracked_run(other, steps=10, layers=["0"])
    code, _, err = run_cli(capsys, "compare", run, other, "--layers", "[24]")
    assert code == 1 and "matched no layer" in one_error_line(err)


# ------------------------------------------------------------------------------ demo


def test_demo_trains_tracks_and_reports(tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--steps", "60", "--width", "100")
    assert code == 0, err
    html = tmp_path / "demo" / "report.html"
    assert html.exists() and f"HTML report: {html}" in out
    frame = ndtracker.load(tmp_path / "demo")
    assert sorted(frame.step.unique())[-1] == 55 and frame.effective_rank.notna().all()
    assert "activation space: stable_rank" in out
