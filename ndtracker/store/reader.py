"""Read the parts of one table of a run directory back into a single Arrow table.

`load` and `read_table` (the read side of :mod:`ndtracker.store`): list the live parts
(a compacted part hides the parts it covers), read them one open file at a time (listing again
when a concurrent compaction merged some away first), read only the wanted columns with the
strings dictionary-encoded, skip a damaged or foreign part, a symlink or a FIFO with a warning
naming it (never opening a FIFO, so never hanging), and sort the rows when asked, after a cheap
check that usually finds them in order already. Rows repeated under one (run, step, layer, space)
(a part copied under another name) are read once. This module imports no
torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ndtracker.errors import NdtrackerError, SchemaError
from ndtracker.store.files import RESOURCE_ERRORS, NotRegularFileError, open_regular
from ndtracker.store.layout import PART_NAME, list_parts, read_run_info
from ndtracker.store.runs import Selection, select_runs
from ndtracker.store.schema import (
    ADDED_COLUMNS, NULLABLE_INTS, SCHEMA_VERSION, SCHEMAS, SORT_KEYS,
    TABLE_SORT_KEYS, VERSION_KEY,
)

__all__ = ["load", "read_table", "read_parts", "sort_rows"]


def read_parts(
    folder: Path, schema: pa.Schema, runs: list[str], run_id: str | None, names: list[str]
) -> pa.Table:
    """Read the live parts of ``folder`` as one table of the ``names`` columns.

    Parts are read one at a time, each closed before the next is opened, so a run of any number of
    parts reads under any open-files limit. A part deleted by a concurrent compaction before it
    was read is covered by the merged part that replaced it: the folder is listed again, the parts
    read already and still live are kept, and only the new ones are read.

    Args:
        folder: ``RUN_DIR/metrics`` or ``RUN_DIR/events``.
        schema: The table's schema (`store.METRICS_SCHEMA` or `store.EVENTS_SCHEMA`).
        runs: The directory's run ids, oldest first: parts are read run by run in this order.
        run_id: Read only this run's parts (and its rows of files not named as parts).
        names: The columns to read.

    Returns:
        The rows in the order written, string columns dictionary-encoded with one dictionary each.

    Raises:
        NdtrackerError: A part cannot be opened for want of file descriptors or memory (not damage:
            the message says to raise the limit), or the folder kept changing.
        SchemaError: A part was written with a newer schema version.
    """
    target = _encoded(pa.schema([schema.field(name) for name in names]))
    done: dict[str, pa.Table | None] = {}
    for _ in range(100):
        live = _live_parts(folder, runs, run_id)
        try:
            for name in live:
                if name not in done:
                    done[name] = _read_part(folder / name, target, run_id)
        except FileNotFoundError:  # merged away meanwhile: the new listing has the merged part
            continue
        kept = [done[name] for name in live if done[name] is not None]
        return pa.concat_tables(kept).unify_dictionaries() if kept else target.empty_table()
    raise NdtrackerError(f"the parts in {folder} kept changing while being read; try again")


def _open(path: Path) -> BinaryIO | None:
    """Open a part if it is a regular file; None, with a warning naming it, when it cannot be.

    Raises:
        FileNotFoundError: It was deleted since the listing.
        NdtrackerError: Too many open files (or no memory) to open it: not the part's fault.
    """
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise
    except NotRegularFileError as error:
        _skip(path, f"it is {error.strerror}")
    except OSError as error:
        if error.errno in RESOURCE_ERRORS:
            raise NdtrackerError(f"cannot open {path}: {error.strerror}; the part is not damaged: "
                                 "raise the open-files limit (ulimit -n) or close files and try "
                                 "again") from None  # fmt: skip
        _skip(path, f"it cannot be opened ({error.strerror or error})")
    return None


def _encoded(schema: pa.Schema) -> pa.Schema:
    """Return ``schema`` with its string columns dictionary-encoded: much faster to read and sort."""
    encoded = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([pa.field(f.name, encoded) if pa.types.is_string(f.type) else f for f in schema])


def _live_parts(folder: Path, runs: list[str], run_id: str | None) -> list[str]:
    """Return the part names to read, in (run, seq) order, without the parts a compaction covers."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    other = []
    for name, match in list_parts(folder):
        if match is None:
            other.append(name)
        elif run_id in (None, match.group(1)):
            first = int(match.group(2))
            spans.setdefault(match.group(1), []).append((first, int(match.group(3) or first), name))
    order = {run: index for index, run in enumerate(runs)}
    ordered = sorted(spans, key=lambda run: (order.get(run, len(order)), run))
    return [name for run in ordered for name in _uncovered(spans[run])] + other


def _uncovered(spans: list[tuple[int, int, str]]) -> list[str]:
    """Drop every span that lies inside another (its rows live in the covering compacted part)."""
    live, reach = [], -1
    for first, last, name in sorted(spans, key=lambda span: (span[0], -span[1])):
        if last > reach:
            live.append(name)
            reach = last
    return live


def _read_part(path: Path, target: pa.Schema, run_id: str | None) -> pa.Table | None:
    """Read one part as ``target``; None, with a warning naming the file, when it is damaged."""
    handle = _open(path)
    if handle is None:
        return None
    strings = [field.name for field in target if pa.types.is_dictionary(field.type)]
    with handle:
        try:
            table = _read_open(handle, path, target, strings)
        except (pa.ArrowException, OSError) as error:
            _skip(path, f"it is not a readable Parquet file ({error})")
            return None
    return None if table is None else _conform(table, target, path, run_id)


def _read_open(handle: BinaryIO, path: Path, target: pa.Schema, strings: list[str]) -> pa.Table | None:
    try:
        part = pq.ParquetFile(handle, read_dictionary=strings)
    except KeyError:  # a string column is missing: open it as is to say which
        part = pq.ParquetFile(handle)
    _check_version(part.schema_arrow, path)
    present = part.schema_arrow.names
    missing = [name for name in target.names if name not in present and name not in ADDED_COLUMNS]
    if missing:
        _skip(path, f"it is not an ndtracker part (no column {missing[0]!r})")
        return None
    return _with_added_columns(part.read(columns=[name for name in target.names if name in present]), target)


def _with_added_columns(table: pa.Table, target: pa.Schema) -> pa.Table:
    """Add the columns of ``target`` a part written before they existed lacks, as nulls."""
    for index, field in enumerate(target):
        if field.name not in table.column_names:
            table = table.add_column(index, field, pa.nulls(table.num_rows, field.type))
    return table


def _conform(table: pa.Table, target: pa.Schema, path: Path, run_id: str | None) -> pa.Table | None:
    if not table.schema.equals(target, check_metadata=False):
        try:
            table = table.cast(target)
        except (pa.ArrowException, ValueError) as error:
            _skip(path, f"its columns do not have the ndtracker types ({error})")
            return None
    if run_id is not None and PART_NAME.match(path.name) is None:
        table = table.filter(pc.equal(table["run_id"], run_id))
    return table.replace_schema_metadata(None)


def _check_version(schema: pa.Schema, path: Path) -> None:
    version = (schema.metadata or {}).get(VERSION_KEY.encode())
    if version is not None and version.isdigit() and int(version) > SCHEMA_VERSION:
        raise SchemaError(f"{path} was written with schema version {int(version)}, newer than "
                          f"{SCHEMA_VERSION}, the newest this ndtracker reads; upgrade "
                          "ndtracker")  # fmt: skip


def _skip(path: Path, why: str) -> None:
    warnings.warn(f"skipping {path}: {why}", RuntimeWarning, stacklevel=6)


def sort_rows(
    table: pa.Table, runs: list[str], sort: bool = True, key_columns: Sequence[str] = SORT_KEYS
) -> pa.Table:
    """Sort rows by (run, step, layer, space, rank), stably, and keep the first of rows with equal keys.

    Args:
        table: Rows with ``run_id``, ``step``, ``layer`` and ``space`` columns, strings
            dictionary-encoded with one dictionary per column (``Table.unify_dictionaries``).
        runs: Run ids in the order their rows should come (by start time); others go last.
        sort: With False the rows keep their order; only the repeats are dropped.
        key_columns: The key columns: the run, the step, then string columns (default ``run_id, step,
            layer, space``; the similarity table's are ``run_id, step, layer_a, layer_b, space``).

    Returns:
        The table. A log written by one writer is in order and has no repeat, which costs one pass
        over the keys.
    """
    if table.num_rows < 2:
        return table
    keys = [
        _codes(table[key_columns[0]], runs),
        pc.fill_null(table[key_columns[1]], -1).to_numpy(),
        *(_codes(table[name]) for name in key_columns[2:] if name != "rank"),
    ]
    if "rank" in table.column_names:  # every rank of a distributed job writes its own rows
        keys.append(pc.fill_null(table["rank"], -1).to_numpy())
    if _in_order(keys):
        return _first_of_each(table, keys)
    order = np.lexsort(keys[::-1])  # stable: the first of equal rows stays first
    repeat = _repeats([key[order] for key in keys])  # in sorted order
    if sort:
        table, keep = table.take(order), ~repeat
    else:
        keep = np.ones(table.num_rows, bool)
        keep[order[repeat]] = False
    return table if keep.all() else table.filter(pa.array(keep))


def _first_of_each(table: pa.Table, keys: list[np.ndarray]) -> pa.Table:
    """Drop the rows whose keys equal the previous row's (the keys are in order)."""
    repeat = _repeats(keys)
    return table if not repeat.any() else table.filter(pa.array(~repeat))


def _repeats(keys: list[np.ndarray]) -> np.ndarray:
    """Per row, whether every key equals the previous row's (False for the first row)."""
    same = np.ones(len(keys[0]) - 1, bool)
    for key in keys:
        same &= key[1:] == key[:-1]
    return np.concatenate([[False], same])


def _in_order(keys: list[np.ndarray]) -> bool:
    """Whether consecutive rows never decrease in the lexicographic order of ``keys``."""
    tied = np.ones(len(keys[0]) - 1, bool)
    for key in keys:
        before, after = key[:-1], key[1:]
        if np.any(tied & (after < before)):
            return False
        tied &= after == before
        if not tied.any():
            break
    return True


def _codes(column: pa.ChunkedArray, values: list[str] | None = None) -> np.ndarray:
    """Rank each row of a dictionary column among ``values`` (default: its values, sorted); nulls last.

    The chunks must share one dictionary (``Table.unify_dictionaries``). When the dictionary is
    already in rank order and there is no null, the codes are its indices, read without a copy.
    """
    dictionary = column.chunk(0).dictionary
    rank = _ranks(dictionary, values)
    if column.null_count == 0:
        indices = np.concatenate([chunk.indices.to_numpy() for chunk in column.chunks])
        return indices if np.array_equal(rank, np.arange(rank.size)) else rank[indices]
    rank = np.append(rank, rank.max(initial=-1) + 1)  # the rank of null
    null = len(dictionary)
    return np.concatenate([rank[pc.fill_null(chunk.indices, null).to_numpy()] for chunk in column.chunks])


def _ranks(dictionary: pa.Array, values: list[str] | None) -> np.ndarray:
    """Rank of each dictionary entry: its place among ``values`` (absent: last), or in sorted order."""
    if values is not None:
        found = pc.index_in(dictionary, value_set=pa.array(values, pa.string()))
        return pc.fill_null(found, len(values)).to_numpy().astype(np.int64)
    rank = np.empty(len(dictionary), np.int64)
    rank[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary))
    return rank


def load(
    run_dir: str | os.PathLike,
    *,
    run_id: str | Sequence[str] | None = None,
    events: bool = False,
    columns: Sequence[str] | None = None,
    table: str | None = None,
    rank: int | None = None,
) -> pd.DataFrame:
    """Load the rows of a run directory as a DataFrame, sorted by (run start, step, layer, space).

    A directory can hold several runs; they are never mixed silently. By default the latest run is
    loaded, stitched to the runs it resumes (see :mod:`ndtracker.store.runs`), with a warning
    naming the runs left out.

    Args:
        run_dir: The directory a Tracker (or `RunWriter`) wrote to.
        run_id: None (default: the latest run, with the runs it resumes), ``"all"`` (every run;
            each row carries its ``run_id``), one run id, or a list (or comma-separated string) of
            run ids to read as one resumed run.
        events: Load the events table (jumps and phases) instead of the metrics (the same as
            ``table="events"``).
        columns: Load only these columns, in this order (default: all, in schema order).
        table: Which table: ``"metrics"`` (default), ``"events"``, ``"similarity"`` (layer
            pairs' CKA, ``step, layer_a, layer_b, space, cka, rows, status``, written with
            ``Tracker(..., similarity=True)``) or ``"classes"`` (class geometry, written when
            labels are passed to ``Tracker.step``).
        rank: Only the rows written by this rank of a torch.distributed job (``ranks="all"``
            writes one set of rows per rank); a run written by one process counts as rank 0.
            Default: the rows of every rank, each with its ``rank``. Only the ``metrics`` and
            ``events`` tables carry ranks.

    Returns:
        One row per (step, layer, space) for metrics; ``energy90`` (and ``direction`` of events) are
        pandas nullable integers. An empty frame with the same columns and dtypes when no part exists.

    Raises:
        RunNotFoundError: ``run_dir`` does not exist or holds no run, or ``run_id`` names a run
            that is not in it.
        ValueError: ``columns`` names an unknown column, or ``table`` an unknown table or one that
            contradicts ``events=True``, or ``rank`` is not a rank that wrote rows of the run.
        SchemaError: ``run.json`` or a part was written with a newer schema version.

    Damaged parts (truncated, not Parquet, other columns) are skipped with a warning naming them.
    """
    name = _table_name(table, events)
    entries = read_run_info(run_dir)
    selection = select_runs(entries, run_id, run_dir)
    if run_id is None and selection.others:
        warnings.warn(_others_notice(run_dir, selection), UserWarning, stacklevel=2)
    return _to_frame(_read(run_dir, entries, selection, name, columns, sort=True, rank=rank))


def read_table(
    run_dir: str | os.PathLike,
    *,
    run_id: str | Sequence[str] | None = None,
    events: bool = False,
    columns: Sequence[str] | None = None,
    sort: bool = True,
    table: str | None = None,
    rank: int | None = None,
) -> pa.Table:
    """Load rows as a pyarrow Table, string columns dictionary-encoded: `load` without pandas.

    Args:
        run_dir, run_id, events, columns, table, rank: As for `load` (no warning about runs left
            out).
        sort: Sort as `load` does (default). With False the rows come in the order they were
            written (each run's parts in turn), which saves the sort's time and memory on a long
            run when the caller groups the rows itself. Either way a row repeated under the same
            (run, step, layer, space), as from a part copied under another name, is read once.

    Returns:
        The table; its string columns are ``dictionary<int32, string>`` with one dictionary each.

    Raises:
        RunNotFoundError, ValueError, SchemaError: As for `load`.
    """
    name = _table_name(table, events)
    entries = read_run_info(run_dir)
    return _read(run_dir, entries, select_runs(entries, run_id, run_dir), name, columns, sort, rank)


def _table_name(table: str | None, events: bool) -> str:
    """The table to read: ``table``, or ``events``/``metrics`` from the ``events`` flag."""
    if table is None:
        return "events" if events else "metrics"
    if table not in SCHEMAS or (events and table != "events"):
        raise ValueError(f"table must be one of {tuple(SCHEMAS)} (and 'events' with events=True), "
                         f"got table={table!r}, events={events!r}")  # fmt: skip
    return table


def _read(
    run_dir: str | os.PathLike, entries: list[dict], selection: Selection, name: str,
    columns: Sequence[str] | None, sort: bool, rank: int | None = None,
) -> pa.Table:  # fmt: skip
    schema, key_columns = SCHEMAS[name], TABLE_SORT_KEYS[name]
    wanted = _check_columns(columns, schema)
    _check_rank(rank, name, key_columns)
    runs = [str(run.get("run_id")) for run in entries]
    names = list(dict.fromkeys([*key_columns, *wanted]))
    folder = Path(run_dir) / name
    if len(selection.runs) == len(entries) and not selection.stitched:  # every run: one pass
        tables = [read_parts(folder, schema, runs, None, names)]
    else:
        tables = [_until(read_parts(folder, schema, runs, one, names), stop)
                  for one, stop in zip(selection.run_ids, selection.until)]  # fmt: skip
    table = pa.concat_tables(tables).unify_dictionaries() if len(tables) > 1 else tables[0]
    if rank is not None:
        table = _of_rank(table, rank, selection.run_ids)
    return sort_rows(table, runs, sort, key_columns).select(wanted)


def _check_rank(rank: Any, name: str, key_columns: Sequence[str]) -> None:
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a process rank (an int >= 0) or None, got rank={rank!r}")
    if "rank" not in key_columns:
        raise ValueError(f"rank={rank}: the {name} table has no rank column (only metrics and events "
                         "do); leave rank=None")  # fmt: skip


def _of_rank(table: pa.Table, rank: int, run_ids: Sequence[str]) -> pa.Table:
    """The rows written by ``rank``; rows without a rank (one process wrote them) count as rank 0."""
    ranks = pc.fill_null(table["rank"], 0)
    kept = table.filter(pc.equal(ranks, rank))
    if kept.num_rows == 0 and table.num_rows:
        present = sorted(pc.unique(ranks).to_pylist())
        raise ValueError(f"rank={rank}: run {', '.join(run_ids)} has rows of rank(s) "
                         f"{', '.join(map(str, present))} only")  # fmt: skip
    return kept


def _until(table: pa.Table, stop: int | None) -> pa.Table:
    """The rows of ``table`` before step ``stop`` (a later, resumed run covers the rest)."""
    return table if stop is None else table.filter(pc.less(table["step"], stop))


def _others_notice(run_dir: str | os.PathLike, selection: Selection) -> str:
    loaded = ", ".join(selection.run_ids)
    what = f"the latest run {loaded}" if len(selection.runs) == 1 else f"the latest run stitched to the runs it resumes ({loaded})"
    return (f"{str(run_dir)!r} holds {len(selection.runs) + len(selection.others)} runs; loaded {what}; "
            f"pass run_id='all' for every run, or run_id=ID for one of: {', '.join(selection.others)}")  # fmt: skip


def _check_columns(columns: Sequence[str] | None, schema: pa.Schema) -> list[str]:
    if columns is None:
        return list(schema.names)
    unknown = [name for name in columns if name not in schema.names]
    if unknown or isinstance(columns, str):
        raise ValueError(f"columns={columns!r} is not a list of known columns; they are: "
                         f"{', '.join(schema.names)}")  # fmt: skip
    return list(columns)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Convert to pandas: strings as ``str``, nullable integer columns as pandas nullable integers."""
    plain = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema]
    frame = table.cast(pa.schema(plain)).to_pandas(split_blocks=True, self_destruct=True)
    for name, dtype in NULLABLE_INTS.items():
        if name in frame:
            frame[name] = frame[name].astype(dtype)
    return frame
