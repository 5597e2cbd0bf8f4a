"""The Parquet export format: one row per trace, steps as a list of structs, typed columns.

The rows are the ``trace`` format's records (``as_trace``: every field, plus
``id`` = ``topic/partition/offset`` and ``split``), so a Parquet file and the
``trace`` JSON Lines file of the same manifest hold the same values. Row
groups are a fixed number of rows and nothing depends on time, so the same
manifest (and pyarrow version) gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from schemas.exports import as_trace

PARQUET = "parquet"
ROW_GROUP_ROWS = 10_000

STEP = pa.struct([("i", pa.int32()), ("type", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("trace_id", pa.string()),
    ("trace_version", pa.int32()),
    ("prompt", pa.string()),
    ("steps", pa.list_(STEP)),
    ("final_answer", pa.string()),
    ("meta", pa.map_(pa.string(), pa.string())),
    ("source", pa.string()),
    ("created_at", pa.timestamp("ms", tz="UTC")),
    ("score", pa.float64()),
    ("model", pa.string()),
])


def parquet_row(record: Mapping[str, Any], split: str) -> dict:
    """The ``trace`` export's record with ``created_at`` as an instant and ``meta`` as sorted pairs."""
    row = as_trace(record, split)
    row["created_at"] = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
    row["meta"] = sorted(row["meta"].items())
    return row


def record_batch(rows: Iterable[dict]) -> pa.RecordBatch:
    """A batch of ``parquet_row`` rows in ``SCHEMA``."""
    return pa.RecordBatch.from_pylist(list(rows), schema=SCHEMA)
