"""The declared Parquet schemas of a run directory's tables, with their version and sort keys.

Every part of ``metrics/``, ``events/`` and ``classes/`` carries :data:`SCHEMA_VERSION` in its
metadata (under :data:`VERSION_KEY`); readers refuse a newer version. Pure declarations: no file is touched here.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION", "VERSION_KEY", "METRICS_SCHEMA", "EVENTS_SCHEMA", "CLASSES_SCHEMA", "SCHEMAS",
    "ADDED_COLUMNS", "NULLABLE_INTS", "SORT_KEYS",
]  # fmt: skip

SCHEMA_VERSION: int = 1
VERSION_KEY = "ndtracker_schema_version"


def _schema(table: str, fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    metadata = {VERSION_KEY: str(SCHEMA_VERSION), "ndtracker_table": table}
    return pa.schema(fields, metadata=metadata)


METRICS_SCHEMA: pa.Schema = _schema("metrics", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("stable_rank", pa.float64()), ("participation_ratio", pa.float64()),
    ("effective_rank", pa.float64()), ("energy90", pa.int64()),
    ("rows", pa.int64()), ("cols", pa.int64()), ("estimator", pa.string()),
    ("loss", pa.float64()), ("wall_time", pa.float64()), ("status", pa.string()),
    ("condensation", pa.float64()), ("directions", pa.float64()),
])  # fmt: skip
EVENTS_SCHEMA: pa.Schema = _schema("events", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("metric", pa.string()), ("kind", pa.string()), ("direction", pa.int8()),
    ("size", pa.float64()), ("z", pa.float64()), ("phase", pa.string()),
    ("wall_time", pa.float64()),
])  # fmt: skip

CLASSES_SCHEMA: pa.Schema = _schema("classes", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("classes", pa.int64()), ("skipped_classes", pa.int64()),
    ("nc1", pa.float64()), ("radius", pa.float64()), ("dimension", pa.float64()),
    ("center_alignment", pa.float64()), ("axes_alignment", pa.float64()),
    ("ncc_accuracy", pa.float64()), ("rows", pa.int64()), ("status", pa.string()),
    ("wall_time", pa.float64()),
])  # fmt: skip
"""Class geometry of the activations: one row per (step, layer); ``space`` is ``activation``."""

SCHEMAS: dict[str, pa.Schema] = {"metrics": METRICS_SCHEMA, "events": EVENTS_SCHEMA, "classes": CLASSES_SCHEMA}
ADDED_COLUMNS = frozenset({"condensation", "directions"})
"""Columns added to a table after version 1: a part written before them reads them as null."""
NULLABLE_INTS = {"energy90": "Int64", "direction": "Int8", "classes": "Int64", "skipped_classes": "Int64"}  # pandas dtypes that keep nulls
SORT_KEYS = ("run_id", "step", "layer", "space")
