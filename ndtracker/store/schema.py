"""The declared Parquet schemas of a run directory's tables, with their version and sort keys.

Every part of ``metrics/``, ``events/``, ``similarity/`` and ``classes/`` carries :data:`SCHEMA_VERSION` in its
metadata (under :data:`VERSION_KEY`); readers refuse a newer version. Pure declarations: no file is touched here.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION", "VERSION_KEY", "METRICS_SCHEMA", "EVENTS_SCHEMA", "SIMILARITY_SCHEMA",
    "CLASSES_SCHEMA", "SCHEMAS", "NULLABLE_INTS", "SORT_KEYS", "TABLE_SORT_KEYS", "ADDED_COLUMNS",
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
    ("rank", pa.int64()), ("grad_norm", pa.float64()), ("probe_accuracy", pa.float64()),
    ("source", pa.string()), ("condensation", pa.float64()), ("directions", pa.float64()),
])  # fmt: skip
EVENTS_SCHEMA: pa.Schema = _schema("events", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("metric", pa.string()), ("kind", pa.string()), ("direction", pa.int8()),
    ("size", pa.float64()), ("z", pa.float64()), ("phase", pa.string()),
    ("wall_time", pa.float64()), ("rank", pa.int64()),
])  # fmt: skip

SIMILARITY_SCHEMA: pa.Schema = _schema("similarity", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer_a", pa.string()), ("layer_b", pa.string()),
    ("space", pa.string()), ("cka", pa.float64()), ("rows", pa.int64()), ("status", pa.string()),
    ("wall_time", pa.float64()),
])  # fmt: skip

CLASSES_SCHEMA: pa.Schema = _schema("classes", [
    ("run_id", pa.string()), ("step", pa.int64()), ("layer", pa.string()), ("space", pa.string()),
    ("classes", pa.int64()), ("skipped_classes", pa.int64()),
    ("nc1", pa.float64()), ("radius", pa.float64()), ("dimension", pa.float64()),
    ("center_alignment", pa.float64()), ("axes_alignment", pa.float64()),
    ("ncc_accuracy", pa.float64()), ("rows", pa.int64()), ("status", pa.string()),
    ("wall_time", pa.float64()), ("source", pa.string()),
])  # fmt: skip
"""Class geometry of the activations: one row per (step, layer); ``space`` is ``activation``;
``source`` says whose examples (``train``: the step's training forward, ``probe``: the probe batch)."""

SCHEMAS: dict[str, pa.Schema] = {
    "metrics": METRICS_SCHEMA, "events": EVENTS_SCHEMA, "similarity": SIMILARITY_SCHEMA,
    "classes": CLASSES_SCHEMA,
}  # fmt: skip
NULLABLE_INTS = {  # pandas dtypes that keep nulls
    "energy90": "Int64", "direction": "Int8", "rank": "Int64", "classes": "Int64", "skipped_classes": "Int64",
}  # fmt: skip
SORT_KEYS = ("run_id", "step", "layer", "space", "rank")  # rank: ranks="all" of a distributed job
TABLE_SORT_KEYS: dict[str, tuple[str, ...]] = {
    "metrics": SORT_KEYS, "events": (*SORT_KEYS[:4], "metric", "kind", "rank"),
    "similarity": ("run_id", "step", "layer_a", "layer_b", "space"), "classes": ("run_id", "step", "layer", "space"),
}  # fmt: skip
# Columns added after schema version 1 first shipped: parts written before them read them as null.
# ``rank`` is the global rank of the process that wrote the row in a torch.distributed job (null
# otherwise); ``grad_norm`` and ``probe_accuracy`` are opt-in measurements; ``source`` says where
# activation rows and class rows came from (``train`` or ``probe``); ``condensation`` and ``directions`` are
# written with ``Tracker(condensation=True)``.
ADDED_COLUMNS: frozenset[str] = frozenset(
    {"rank", "grad_norm", "probe_accuracy", "source", "condensation", "directions"}
)
