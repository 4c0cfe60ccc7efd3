"""Row mappings to an Arrow table of a declared schema, never failing over one odd value.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from ndtracker.store.schema import TABLE_SORT_KEYS

__all__ = ["rows_to_table"]


def rows_to_table(
    rows: Sequence[Mapping[str, Any]], schema: pa.Schema, run_id: str, rank: int | None = None
) -> pa.Table:
    """Convert row mappings to a table of ``schema``, sorted by (step, layer, space).

    Args:
        rows: Mappings keyed by column name; missing keys are null, unknown keys are ignored.
        schema: `METRICS_SCHEMA` or `EVENTS_SCHEMA`.
        run_id: The value of the ``run_id`` column.
        rank: The value of the ``rank`` column (the writing process's rank), or None.

    Returns:
        The table; a value its column's type cannot hold (a NaN in an integer column, text in a
        float column) is stored as null.
    """
    columns = [pa.repeat(pa.scalar(run_id, pa.string()), len(rows))]
    for field in list(schema)[1:]:
        if field.name == "rank":
            columns.append(pa.repeat(pa.scalar(rank, pa.int64()), len(rows)))
        else:
            columns.append(_column([row.get(field.name) for row in rows], field.type))
    table = pa.Table.from_arrays(columns, schema=schema)
    keys = TABLE_SORT_KEYS[schema.metadata[b"ndtracker_table"].decode()]
    return table.sort_by([(key, "ascending") for key in keys[1:]])


_BAD_VALUE = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _column(values: list[Any], kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=kind)
    except _BAD_VALUE:  # rare: convert value by value, nulls for what does not fit
        return pa.array([_fit(value, kind) for value in values], type=kind)


def _fit(value: Any, kind: pa.DataType) -> Any:
    """Return ``value``, or its conversion to the Python type of ``kind``, or None if neither fits."""
    for candidate in (value, _coerce(value, kind)):
        try:
            pa.scalar(candidate, type=kind)
            return candidate
        except _BAD_VALUE:
            pass
    return None


def _coerce(value: Any, kind: pa.DataType) -> Any:
    try:
        if pa.types.is_string(kind):
            return str(value)
        if pa.types.is_integer(kind):
            number = float(value)
            return int(number) if number.is_integer() else None
        return float(value)
    except _BAD_VALUE:
        return None
