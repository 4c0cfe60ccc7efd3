"""Hostile and damaged run directories: no hang, no traceback, no write through a planted link.

FIFOs, symlinks, damaged ``run.json`` files, non-UTF-8 names and open-files limits, each from
issue 18. A case that used to hang runs in a subprocess with a timeout, so a regression fails
instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
from store_rows import grid, write

from ndtracker import store
from ndtracker.errors import NdtrackerError, SchemaError
from ndtracker.store import files
from ndtracker.store.rows import rows_to_table

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the worktree root; a hang fails after ``timeout``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# ------------------------------------------------------------------------------ FIFOs and links


def test_a_fifo_named_like_a_part_is_skipped_not_opened(tmp_path):
    write(tmp_path, [grid([0])])
    os.mkfifo(tmp_path / "metrics" / "part-20260101-000000-beef-000000.parquet")
    os.mkfifo(tmp_path / "metrics" / "zz.parquet")
    done = run_python("""
        import sys, warnings
        from ndtracker import store
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(len(store.load(sys.argv[1], run_id="all")), sum("FIFO" in str(w.message) for w in caught))
    """, str(tmp_path), timeout=60)  # before: load() blocked for ever in open()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "2"]


def test_a_fifo_as_run_json_is_damage_not_a_hang(tmp_path):
    write(tmp_path, [grid([0])])
    (tmp_path / "run.json").unlink()
    os.mkfifo(tmp_path / "run.json")
    done = run_python("""
        import sys
        from ndtracker import store
        print(len(store.load(sys.argv[1])))
    """, str(tmp_path), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr
    assert "not a valid ndtracker run file (not a regular file (a FIFO))" in done.stderr


def test_symlinks_in_metrics_are_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, [grid([7])])
    [outside] = (elsewhere / "metrics").glob("part-*.parquet")
    run_dir = tmp_path / "run"
    write(run_dir, [grid([0])])
    (run_dir / "metrics" / "part-20260101-000000-beef-000000.parquet").symlink_to(outside)
    (run_dir / "metrics" / "dangling.parquet").symlink_to(tmp_path / "nowhere.parquet")
    with pytest.warns(RuntimeWarning, match="skipping .*: it is not a regular file") as caught:
        frame = store.load(run_dir)
    assert frame.step.tolist() == [0] * 4 and len(caught) == 2


def test_atomic_writes_replace_a_planted_symlink_and_never_write_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.bin"
    target.symlink_to(victim)
    with files.atomic_write(target) as handle:
        handle.write(b"report")
    assert victim.read_text() == "precious" and not target.is_symlink()
    assert target.read_bytes() == b"report"
    assert files.temp_path(target) != files.temp_path(target)  # no name to plant a link at


def test_a_symlinked_lock_file_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".run.json.lock").symlink_to(victim)
    with pytest.raises(NdtrackerError, match="lock file .* symlink"):
        store.RunWriter(run_dir, run_info={})
    assert victim.read_text() == "precious"


def test_a_non_utf8_file_name_is_skipped_by_name(tmp_path):
    write(tmp_path, [grid([0])])
    name = os.fsdecode(b"part-\xff\xfe.parquet")
    (tmp_path / "metrics" / name).write_bytes(b"not parquet")
    with pytest.warns(RuntimeWarning, match="skipping .*not a readable Parquet file"):
        assert len(store.load(tmp_path)) == 4


# ------------------------------------------------------------------------------ damaged run.json


DAMAGED = {
    "schema_version 1e999": ('{"schema_version": 1e999, "runs": []}', "schema_version is inf"),
    "deep JSON": ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    "options null": ('{"runs": [{"run_id": "r", "options": null}]}', "options is None"),
    "layers 5": ('{"runs": [{"run_id": "r", "layers": 5}]}', "layers is 5"),
    "no run_id": ('{"runs": [{"model": "Net"}]}', "run_id is None"),
    "metrics 5": ('{"runs": [{"run_id": "r", "options": {"metrics": 5}}]}', "options.metrics is 5"),
    "runs null": ('{"runs": null}', "'runs' is None"),
    "a list": ("[1, 2]", "the top level is not an object"),
    "not UTF-8": (b"\xff\xfe{}", "not JSON"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_run_json_warns_on_read_and_raises_one_line_on_write(tmp_path, case):
    writer = write(tmp_path, [grid([0])])
    text, why = DAMAGED[case]
    path = tmp_path / "run.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.warns(RuntimeWarning, match=f"ignoring {path}: not a valid ndtracker run file") as caught:
        frame = store.load(tmp_path)
    assert why in str(caught[0].message)
    assert frame.run_id.unique().tolist() == [writer.run_id]  # the parts still load
    with pytest.raises(NdtrackerError, match=f"{path} is not a valid ndtracker run file") as raised:
        store.RunWriter(tmp_path, run_info={})
    assert why in str(raised.value) and "\n" not in str(raised.value)


def test_a_dangling_symlink_as_run_json_is_damage(tmp_path):
    write(tmp_path, [grid([0])])
    (tmp_path / "run.json").unlink()
    (tmp_path / "run.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.warns(RuntimeWarning, match="not a valid ndtracker run file .*not a regular file"):
        assert len(store.load(tmp_path)) == 4
    with pytest.raises(NdtrackerError, match="run.json is not a valid"):
        store.RunWriter(tmp_path, run_info={})


def test_a_newer_integer_schema_version_is_still_a_schema_error(tmp_path):
    write(tmp_path, [grid([0])])
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 10**30, "runs": []}))
    with pytest.raises(SchemaError, match="newer"):
        store.load(tmp_path)


# ------------------------------------------------------------------------------ open-files limit


LIMITED = """
    import resource, sys, warnings
    from ndtracker import store
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = store.load(sys.argv[1], run_id="all")
    print(len(frame), frame.run_id.nunique(), len(caught))
"""


def many_parts(folder, runs: int, parts_per_run: int) -> None:
    """Write ``runs`` x ``parts_per_run`` one-row parts straight to disk (no compaction)."""
    (folder / "metrics").mkdir(parents=True)
    for run in range(runs):
        run_id = f"20260101-{run:06d}-beef"
        for seq in range(parts_per_run):
            rows = [{"step": seq, "layer": "fc", "space": "weight"}]
            table = rows_to_table(rows, store.METRICS_SCHEMA, run_id)
            pq.write_table(table, folder / "metrics" / f"part-{run_id}-{seq:06d}.parquet")


def test_more_parts_than_the_open_files_limit_all_load(tmp_path):
    many_parts(tmp_path, runs=1, parts_per_run=300)
    done = run_python(LIMITED, str(tmp_path), "64")  # before: 1500 parts at 1024 files lost 481
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["300", "1", "0"]


def test_more_runs_than_the_open_files_limit_all_load(tmp_path):
    many_parts(tmp_path, runs=150, parts_per_run=1)
    done = run_python(LIMITED, str(tmp_path), "64")  # before: 300 runs at 256 files lost 49 runs
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["150", "150", "0"]


def test_running_out_of_file_descriptors_is_an_error_not_damage(tmp_path):
    write(tmp_path, [grid([0])])
    done = run_python("""
        import os, resource, sys
        from ndtracker import store
        from ndtracker.errors import NdtrackerError
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        info = store.read_run_info(sys.argv[1])  # before the descriptors run out
        held = []
        try:
            while True:
                held.append(open(os.devnull))
        except OSError:
            pass
        try:
            store.read_table(sys.argv[1], run_id="all")
        except NdtrackerError as error:
            print("error:", error)
    """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "error: cannot open" in done.stdout and "ulimit -n" in done.stdout
    assert "skipping" not in done.stderr
