"""Dataset records as Arrow rows: the columnar form of replay, the same from Kafka and from the warehouse.

A dataset record (``dataset.hashing``) becomes one row of ``RECORD_SCHEMA``:
the latest Trace's fields in the schema's order (steps as structs, meta as a
map, ``created_at`` in UTC milliseconds), then its Kafka coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

RECORD_SCHEMA = pa.schema([
    ("trace_id", pa.string()), ("trace_version", pa.int32()), ("prompt", pa.string()),
    ("steps", pa.list_(pa.struct([("i", pa.int32()), ("type", pa.string()), ("content", pa.string())]))),
    ("final_answer", pa.string()), ("meta", pa.map_(pa.string(), pa.string())), ("source", pa.string()),
    ("created_at", pa.timestamp("ms", tz="UTC")), ("score", pa.float64()), ("model", pa.string()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
])


def records_table(records: Sequence[dict]) -> pa.Table:
    """Dataset records (dicts) as a table of ``RECORD_SCHEMA``, in their order."""
    return pa.Table.from_pylist(list(records), schema=RECORD_SCHEMA)
