"""Time ``ndtracker report`` on a synthetic log of a long run: 1 000 000 steps, every 5, 50 layers.

The log has 200 000 samples x 50 layers x 2 spaces = 20 000 000 rows, written as the store writes
them: the run registered by ``store.RunWriter`` (its ``run.json`` entry and run id), then parts in
the store's schema (``store.METRICS_SCHEMA``) written with pyarrow directly, because appending 20M
row dicts through the writer would time the benchmark's own Python loop, not the report. Series are
noisy plateaus with a collapse, an expansion and a few jumps, so detection has real work to do.

Usage::

    python benchmarks/report_scale.py                  # the full size
    python benchmarks/report_scale.py --steps 200000   # smaller, for a quick look
    python benchmarks/report_scale.py --keep DIR       # write the log to DIR and keep it
    python benchmarks/report_scale.py --reuse DIR      # time the report of a log kept before

Prints the time of each stage (``store.load`` for comparison; the report's own read, split, detect,
terminal, HTML) in-process, then the wall time
of the command itself, ``ndtracker report RUN`` and ``ndtracker report RUN --html FILE``, run in a
fresh interpreter as a user would (imports included).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ndtracker import store
from ndtracker.reports import build
from ndtracker.reports import analysis
from ndtracker.reports.terminal import progress_bar
from ndtracker.store.runs import select_runs

ROW_GROUP = 262_144
REPORT_COLUMNS = ["step", "layer", "space", "stable_rank", "loss", "status"]
PARTS = 16


def main() -> None:
    args = parse()
    folder = Path(args.reuse or args.keep or tempfile.mkdtemp(prefix="ndtracker-scale-"))
    started = time.perf_counter()
    if not args.reuse:
        write_log(folder, args.steps, args.every, args.layers)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (folder / "metrics").glob("*.parquet"))
    size = sum(p.stat().st_size for p in (folder / "metrics").iterdir()) / 2**20
    print(f"log: {rows:,} rows ({args.steps:,} steps, every {args.every}, {args.layers} layers, "
          f"2 spaces), {size:.0f} MiB of Parquet, written in {time.perf_counter() - started:.1f} s")
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f} (other jobs share the cores)")
    stages(folder)
    for extra in ([], ["--html", str(folder / "report.html")]):
        seconds, cpu = command(folder, extra)
        label = "ndtracker report RUN" + (" --html FILE" if extra else "")
        print(f"{label:<34} {seconds:6.1f} s wall, {cpu:5.1f} s CPU  (fresh process)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    html = folder / "report.html"
    print(f"HTML size: {html.stat().st_size / 2**20:.1f} MiB")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--keep", metavar="DIR", help="write the log here and keep it")
    parser.add_argument("--reuse", metavar="DIR", help="report on the log kept in DIR (not rewritten)")
    return parser.parse_args()


def write_log(folder: Path, steps: int, every: int, layers: int) -> int:
    """Register a run with the store's writer, then write its metric parts with pyarrow."""
    names = [f"blocks.{i}.mlp.fc{1 + i % 2}" for i in range(layers)]
    info = {"model": "Synthetic", "options": {"every": every, "metrics": ["stable_rank", "participation_ratio"]},
            "layers": [{"name": name, "type": "Linear"} for name in names]}  # fmt: skip
    writer = store.RunWriter(folder, run_info=info)
    writer.close()
    samples = np.arange(0, steps, every, dtype=np.int64)
    rng = np.random.default_rng(0)
    values = {(i, s): synthetic_series(samples.size, rng) for i in range(layers) for s in range(2)}
    (folder / "metrics").mkdir(exist_ok=True)
    for part, chunk in enumerate(np.array_split(np.arange(samples.size), PARTS)):
        table = part_table(writer.run_id, samples[chunk], chunk, sorted(names), values)  # writer's order
        pq.write_table(table, folder / "metrics" / f"part-{writer.run_id}-{part}.parquet", row_group_size=ROW_GROUP)
    return samples.size * layers * 2


def synthetic_series(n: int, rng: np.random.Generator) -> np.ndarray:
    """A plateau, a collapse over 5% of the run, a slow expansion, three jumps, AR(1)-ish noise."""
    t = np.linspace(0.0, 1.0, n)
    level = 20 - 12 * np.clip((t - 0.1) / 0.05, 0, 1) + 6 * np.clip((t - 0.6) / 0.3, 0, 1)
    for where in rng.uniform(0.2, 0.95, 3):
        level += rng.choice([-1.5, 1.5]) * (t >= where)
    noise = rng.standard_normal(n) * 0.2
    return level + noise + 0.5 * np.concatenate([[0.0], noise[:-1]])


def part_table(run_id: str, steps: np.ndarray, index: np.ndarray, names: list[str], values: dict) -> pa.Table:
    """Rows of some samples, in the order of ``names`` within a step (sorted: the writer's order)."""
    layers, n = len(names), steps.size * len(names) * 2
    layer_code = np.tile(np.repeat(np.arange(layers), 2), steps.size)
    space_code = np.tile([0, 1], steps.size * layers)
    metric = np.stack([np.stack([values[(i, s)][index] for s in range(2)], 1) for i in range(layers)], 1).ravel()
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()), "step": np.repeat(steps, layers * 2),
        "layer": pa.array(np.array(names, dtype=object)[layer_code], pa.string()),
        "space": pa.array(np.array(["activation", "weight"], dtype=object)[space_code], pa.string()),
        "stable_rank": metric, "participation_ratio": metric * 1.7,
        "effective_rank": pa.nulls(n, pa.float64()), "energy90": pa.nulls(n, pa.int64()),
        "rows": np.full(n, 4096), "cols": np.full(n, 1024), "estimator": pa.array(["randomized"] * n, pa.string()),
        "loss": np.repeat(2.0 / (1 + steps / 1e5), layers * 2), "wall_time": np.repeat(1.7e9 + steps * 0.1, layers * 2),
        "status": pa.array(["ok"] * n, pa.string()),
    }  # fmt: skip
    return pa.table(columns, schema=store.METRICS_SCHEMA)


def stages(folder: Path) -> None:
    """Time the report's stages in this process (the same code the command runs)."""
    clock = Clock()
    runs = store.read_run_info(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clock("store.load (6 columns, sorted)", lambda: store.load(folder, columns=REPORT_COLUMNS))
        table = clock("read (store.read_table)", build._load, folder, [runs[-1]["run_id"]], "stable_rank")
        series = clock("split into series", build._split, table, "stable_rank", None)
        series = build._select(series, runs[-1], None, "stable_rank", None)
        with progress_bar(False) as bar:
            for workers in (2, 1):  # 2: spawned processes (their CPU time is not counted here)
                label = f"detect ({len(series)} series, {workers} process(es))"
                tables = clock(label, analysis.analyse, series, bar, workers)
    rep = build._assemble(str(folder), select_runs(runs, None, folder), runs, "stable_rank", series, tables)
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"), width=120)
    clock("terminal summary", console.print, rep)
    clock("HTML (figures + page)", rep.to_html)
    print(f"phases: {len(rep.phases):,}, jumps: {len(rep.jumps):,}")


class Clock:
    """Call a function, print how long it took, return its result."""

    def __call__(self, label: str, function, *args):
        started, cpu = time.perf_counter(), time.process_time()
        result = function(*args)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"  {label:<34} {wall:6.2f} s wall, {cpu:6.2f} s CPU")
        return result


def command(folder: Path, extra: list[str]) -> tuple[float, float]:
    """Run ``ndtracker report`` in a fresh interpreter; return its wall and CPU seconds."""
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "ndtracker", "report", str(folder), *extra],
                          capture_output=True, text=True)  # fmt: skip
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"ndtracker report failed ({done.returncode}): {done.stderr}")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


if __name__ == "__main__":
    main()
