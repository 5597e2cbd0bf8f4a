"""Traces: a keyset-paged list, one trace whole, two traces side by side.

A list page reads each partition in the table's sort key order (topic,
partition, offset) from the cursor's position and stops at LIMIT
(``api.queries.keyset``); no OFFSET scan, ever.
"""

from __future__ import annotations

from typing import Any

from api.cursor import Cursor
from api.queries import keyset
from dataset.filter import TraceFilter
from dataset.select_sql import filter_sql
from schemas.errors import InvalidDatasetRequest
from schemas.trace_fields import TRACE_FIELDS
from warehouse.client import Warehouse
from warehouse.trace_index import TRACE_ANSWER_COLUMNS

# The key first: ``keyset.Run.parse`` reads it from the start of each JSON line. The fields as
# ``schemas.trace_fields`` lists them: no step bodies, no answer, the prompt's start only.
_LIST_COLUMNS = ", ".join((
    keyset.KEY_COLUMNS, "topic", *(field.listed for field in TRACE_FIELDS if field.listed), "schema_version",
    "substringUTF8(prompt, 1, 200) AS prompt_preview",
))


def where_sql(where: TraceFilter) -> tuple[list[str], dict[str, Any]]:
    """The list's filter as SQL (``dataset.select_sql``): sources, versions, meta and the created window.

    The dataset-only bounds (steps, score) are refused rather than ignored.
    """
    if (where.min_steps, where.max_steps, where.min_score, where.max_score) != (None, None, None, None):
        raise InvalidDatasetRequest("the trace list filters by source, trace_version, meta and created time only")
    return filter_sql(where)


def list_page(warehouse: Warehouse, topic: str, after: Cursor, limit: int, where: TraceFilter) -> keyset.Run:
    """The first ``limit`` traces after ``after`` in its order that meet ``where``, without step bodies."""
    conditions, params = where_sql(where)
    return keyset.run(warehouse, "traces", _LIST_COLUMNS, topic, after, limit, conditions, params)


def by_id(warehouse: Warehouse, trace_id: str) -> bytes:
    """The latest copy of ``trace_id`` as one JSON object line, or b'' when there is none.

    A trace published twice has two rows (two offsets of its partition); the later one wins.
    The API asks the trace index first (``warehouse.trace_index``); this is the warehouse's answer.
    """
    sql = (f"SELECT {TRACE_ANSWER_COLUMNS} FROM {{db:Identifier}}.traces WHERE trace_id = {{trace_id:String}} "
           "ORDER BY ingested_at DESC, offset DESC LIMIT 1")
    return warehouse.query_json(sql, {"db": warehouse.database, "trace_id": trace_id})
