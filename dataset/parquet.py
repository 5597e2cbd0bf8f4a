"""The Parquet export format: one row per trace, steps as a list of structs, typed columns.

The rows are the ``trace`` format's records (``as_trace``: every field, plus
``id`` = ``topic/partition/offset`` and ``split``), so a Parquet file and the
``trace`` JSON Lines file of the same manifest hold the same values. Row
groups are a fixed number of rows and nothing depends on time, so the same
manifest (and pyarrow version) gives byte-identical files.

``ParquetColumns`` builds the batches: each row's canonical values
(``dataset.hashing.Canonical``, the ones hashed) are appended to one Python
list per column (steps and meta flattened, with offsets), and each batch is
made of whole Arrow arrays at once, not of row dicts. ``parquet_row`` and
``record_batch`` are the row-wise definition the columns are tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from dataset.formats import as_trace, record_id
from dataset.hashing import Canonical

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

DICTIONARY_COLUMNS = ["split", "topic", "source", "model", "steps.list.element.type", "meta.key_value.key"]
"""Columns with few distinct values, dictionary-encoded; text columns (prompts, step contents) are not:
their dictionaries only grow until the writer gives up on them."""
STATISTICS_COLUMNS = ["id", "split", "topic", "partition", "offset", "trace_id", "trace_version", "source",
                      "created_at", "score", "model"]
"""Columns with min/max statistics, for readers that skip row groups; none for long text."""


def parquet_row(record: Mapping[str, Any], split: str) -> dict:
    """The ``trace`` export's record with ``created_at`` as an instant and ``meta`` as sorted pairs."""
    row = as_trace(record, split)
    row["created_at"] = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
    row["meta"] = sorted(row["meta"].items())
    return row


def record_batch(rows: Iterable[dict]) -> pa.RecordBatch:
    """A batch of ``parquet_row`` rows in ``SCHEMA``."""
    return pa.RecordBatch.from_pylist(list(rows), schema=SCHEMA)


_NAMES = [f.name for f in SCHEMA]
_SCALARS = ("topic", "partition", "offset", "trace_id", "trace_version", "prompt", "final_answer", "source",
            "score", "model")


class ParquetColumns:
    """Rows of the ``trace`` export, kept as one list per column until ``batch()`` makes Arrow arrays of them."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.rows = 0
        self.ids: list[str] = []
        self.splits: list[str] = []
        self.scalars: dict[str, list] = {name: [] for name in _SCALARS}
        self.created_at: list[str] = []
        self.step_offsets, self.step_i, self.step_type, self.step_content = [0], [], [], []
        self.meta_offsets, self.meta_keys, self.meta_values = [0], [], []

    def add(self, c: Canonical, split: str) -> None:
        """One row: ``c``'s record as the ``trace`` format has it (``id``, ``split`` added)."""
        r = c.record
        self.rows += 1
        self.ids.append(record_id(r))
        self.splits.append(split)
        for name, column in self.scalars.items():
            column.append(r[name])
        self.created_at.append(r["created_at"])
        for step in r["steps"]:
            self.step_i.append(step["i"])
            self.step_type.append(step["type"])
            self.step_content.append(step["content"])
        self.step_offsets.append(len(self.step_i))
        for key, value in sorted(r["meta"].items()):
            self.meta_keys.append(key)
            self.meta_values.append(value)
        self.meta_offsets.append(len(self.meta_keys))

    def batch(self) -> pa.RecordBatch:
        """The rows added since the last call, in ``SCHEMA``; starts over empty."""
        types = {f.name: f.type for f in SCHEMA}
        columns = {name: pa.array(values, types[name]) for name, values in self.scalars.items()}
        columns["id"] = pa.array(self.ids, pa.string())
        columns["split"] = pa.array(self.splits, pa.string())
        # ISO-8601 ``...Z`` text (the canonical form) parsed by Arrow: the instant to the millisecond.
        columns["created_at"] = pa.array(self.created_at, pa.string()).cast(types["created_at"])
        steps = pa.StructArray.from_arrays(
            [pa.array(self.step_i, pa.int32()), pa.array(self.step_type, pa.string()),
             pa.array(self.step_content, pa.string())],
            fields=list(STEP),
        )
        columns["steps"] = pa.ListArray.from_arrays(pa.array(self.step_offsets, pa.int32()), steps, type=types["steps"])
        columns["meta"] = pa.MapArray.from_arrays(
            pa.array(self.meta_offsets, pa.int32()), pa.array(self.meta_keys, pa.string()),
            pa.array(self.meta_values, pa.string()), type=types["meta"],
        )
        self._clear()
        return pa.RecordBatch.from_arrays([columns[name] for name in _NAMES], schema=SCHEMA)
