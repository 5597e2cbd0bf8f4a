"""The one table of a Trace's fields: where each one goes in the warehouse and in the API's answers.

Adding a field to ``Trace`` is: a new Avro schema version (schemas/avro), one
row here, and whatever the field means to its readers. The `traces` DDL
(``warehouse.tables``), the materializer's row builder
(``streams.materialize.trace_rows``), the start-up migration that adds the
column to an existing warehouse, the API's answer for one trace and its list
columns all follow from this table. tests/unit/test_trace_fields.py checks it
against the latest packaged Trace schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TraceColumn:
    """One warehouse column filled from a decoded Trace record."""

    name: str
    type: str
    """ClickHouse type. A column added after v1 must be Nullable or have a default: old rows get it too."""
    value: Callable[[dict], Any]
    """The column's value for one decoded record."""


@dataclass(frozen=True)
class TraceField:
    """One field of the Trace record (Avro field name = canonical record key)."""

    name: str
    columns: tuple[TraceColumn, ...]
    answer: str
    """The SELECT expression that gives the field back, named as the field, in the API's answer."""
    listed: str | None
    """Its SELECT expression in the API's list of traces (None: too big to list, e.g. the prompt)."""
    since: int = 1
    """The Trace schema version that added it."""


def _plain(name: str, type_: str, *, since: int = 1, listed: bool = True, optional: bool = False) -> TraceField:
    value = (lambda record: record.get(name)) if optional else (lambda record: record[name])
    return TraceField(name, (TraceColumn(name, type_, value),), answer=name, listed=name if listed else None,
                      since=since)


STEPS_SQL = ("CAST(arrayZip(step_index, step_type, step_content), "
             "'Array(Tuple(i Int32, type String, content String))')")
"""A trace's steps, as structs (i, type, content), from the three array columns that hold them."""


TRACE_FIELDS: tuple[TraceField, ...] = (
    _plain("trace_id", "String"),
    _plain("trace_version", "Int32"),
    _plain("prompt", "String", listed=False),
    TraceField(
        "steps",
        (TraceColumn("step_index", "Array(Int32)", lambda record: [s["i"] for s in record["steps"]]),
         TraceColumn("step_type", "Array(LowCardinality(String))", lambda record: [s["type"] for s in record["steps"]]),
         TraceColumn("step_content", "Array(String)", lambda record: [s["content"] for s in record["steps"]])),
        answer=f"{STEPS_SQL} AS steps",
        listed="length(step_index) AS steps",
    ),
    _plain("final_answer", "String", listed=False),
    _plain("meta", "Map(String, String)"),
    _plain("source", "LowCardinality(String)"),
    _plain("created_at", "DateTime64(3, 'UTC')"),
    _plain("score", "Nullable(Float64)", optional=True),
    _plain("model", "Nullable(String)", since=2, optional=True),
)
"""In the Avro schema's field order, which is also the order of the columns and of the answers' keys."""

TRACE_RECORD_KEYS: tuple[str, ...] = tuple(field.name for field in TRACE_FIELDS)
"""The keys of a decoded Trace record (the latest version: older ones are filled with defaults)."""

TRACE_FIELD_COLUMNS: tuple[TraceColumn, ...] = tuple(column for field in TRACE_FIELDS for column in field.columns)
"""Every column filled from the record, in table order."""
