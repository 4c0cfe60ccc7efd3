"""Store runs on disk: the Parquet schema, the run directory's layout, the writer and the reader.

A run directory holds any number of runs (see :mod:`ndtracker.store.layout` for the files), written
by :class:`RunWriter` crash-safely as training runs and read back by :func:`load` (pandas) or
:func:`read_table` (pyarrow). Plain Parquet: pandas, ``pyarrow.dataset``, DuckDB, Polars and Spark
read the folders directly. This package imports no torch.
"""

from __future__ import annotations

from ndtracker.store.layout import read_run_info, validate_log_dir
from ndtracker.store.reader import load, read_table
from ndtracker.store.schema import EVENTS_SCHEMA, METRICS_SCHEMA, SCHEMA_VERSION, SIMILARITY_SCHEMA
from ndtracker.store.writer import RunWriter

__all__ = [
    "SCHEMA_VERSION", "METRICS_SCHEMA", "EVENTS_SCHEMA", "SIMILARITY_SCHEMA",
    "RunWriter", "load", "read_table", "read_run_info", "validate_log_dir",
]  # fmt: skip
