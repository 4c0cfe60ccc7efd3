"""Names are shown literally: no markup, no escape sequence, no mathtext, no write through a link.

Layer names and ``run.json`` values come from the user's model and from files anyone may have
edited; `ndtracker report` must show them as written (issue 18): rich markup in a name neither
crashes the report nor hides a hyperlink, terminal escape sequences never reach the terminal,
``$...$`` is never read as mathtext, and ``--html`` never writes through a planted symlink.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ndtracker.cli import main
from ndtracker.store import RunWriter

HOSTILE = [
    "[/x]",
    "[link=https://evil.example]click[/link]",
    "fc\x1b[2J\x1b]52;c;ZXZpbA==\x07",
    "$\\frac$",
    "$\\alpha$",
    "\u202eevil",
    "[bold red]loud",
]


def hostile_run(folder: Path, model: str = "[blink]Net\x1b[2J") -> str:
    writer = RunWriter(folder, run_info={"model": model, "layers": [{"name": n} for n in HOSTILE]})
    rows = []
    for step in range(0, 200, 5):
        for index, layer in enumerate(HOSTILE):
            value = 2.0 + index + (1.5 if step >= 100 else 0.0) + 0.05 * math.sin(step)
            for space in ("activation", "weight"):
                rows.append({"step": step, "layer": layer, "space": space, "stable_rank": value,
                             "loss": 1.0 / (1 + step), "status": "ok"})  # fmt: skip
    writer.append(rows)
    writer.close()
    return writer.run_id


def report(capsys, *argv) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv), "--width", "200"])
    out, err = capsys.readouterr()
    return code, out, err


def test_markup_and_escape_sequences_in_names_are_shown_literally(tmp_path, capsys):
    hostile_run(tmp_path)
    page = tmp_path / "page.html"
    code, out, err = report(capsys, tmp_path, "--html", page)
    assert code == 0, err  # before: "[/x]" crashed the report and no HTML was written
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    for shown in ("[/x]", "[link=https://evil.example]click[/link]", "fc\\x1b[2J\\x1b]52;c;",
                  "$\\frac$", "$\\alpha$", "\\u202eevil", "[bold red]loud", "[blink]Net\\x1b[2J"):  # fmt: skip
        assert shown in out, shown
    html = page.read_text()
    assert "$\\frac$" in html and "$\\alpha$" in html and "α" not in html  # not mathtext
    assert "\x1b" not in html


def test_the_rich_view_never_parses_names_as_markup(tmp_path):
    from rich.console import Console

    import ndtracker

    hostile_run(tmp_path)
    console = Console(width=200, record=True, force_terminal=True)
    console.print(ndtracker.report(tmp_path))
    text = console.export_text()
    assert "[link=https://evil.example]click[/link]" in text and "[/x]" in text
    assert "evil.example" not in console.export_html().split("href=")[-1][:40]  # no hyperlink


def test_html_never_writes_through_a_symlink_in_the_run_directory(tmp_path, capsys):
    hostile_run(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / "run" / "report.html"
    planted.symlink_to(victim)
    code, _, err = report(capsys, tmp_path / "run", "--html", planted)
    assert code == 0, err
    assert victim.read_text() == "precious"  # before: overwritten with the report
    assert not planted.is_symlink() and "<html" in planted.read_text()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_html_over_a_fifo_replaces_it_instead_of_hanging(tmp_path, capsys):
    hostile_run(tmp_path)
    fifo = tmp_path / "page.html"
    os.mkfifo(fifo)
    code, _, err = report(capsys, tmp_path, "--html", fifo)
    assert code == 0, err and fifo.is_file()


def test_a_non_utf8_file_name_is_one_warning_line(tmp_path, capsys):
    hostile_run(tmp_path)
    (tmp_path / "metrics" / os.fsdecode(b"notes-\xff.parquet")).write_bytes(b"junk")
    code, _, err = report(capsys, tmp_path)
    lines = err.strip().splitlines()
    assert code == 0 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("ndtracker: warning: skipping") and "\\udcff" in lines[0]


@pytest.mark.parametrize("doc", [
    {"schema_version": 1, "runs": [{"run_id": "RUN", "options": None}]},
    {"schema_version": 1, "runs": [{"run_id": "RUN", "layers": 5}]},
    {"schema_version": 1, "runs": [{"model": "Net"}]},
])  # fmt: skip
def test_damaged_run_json_is_one_warning_line_and_the_parts_still_report(tmp_path, capsys, doc):
    run_id = hostile_run(tmp_path)
    text = json.dumps(doc).replace("RUN", run_id)
    (tmp_path / "run.json").write_text(text)
    code, out, err = report(capsys, tmp_path)
    assert code == 0 and "Traceback" not in err  # before: AttributeError, TypeError, KeyError
    [line] = err.strip().splitlines()
    assert line.startswith("ndtracker: warning: ignoring") and "not a valid ndtracker run file" in line
    assert run_id in out


def test_errors_naming_a_layer_escape_it(tmp_path, capsys):
    hostile_run(tmp_path)
    code, _, err = report(capsys, tmp_path, "--layers", "nothing*")
    assert code == 1 and "\x1b" not in err and "fc\\x1b[2J" in err
