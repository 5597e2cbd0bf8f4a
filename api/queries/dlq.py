"""Dead letters: a keyset-paged list filterable by reason and stage, and counts by reason."""

from __future__ import annotations

from api.cursor import Cursor
from api.queries import keyset
from warehouse.client import Warehouse

_COLUMNS = (
    f"{keyset.KEY_COLUMNS}, trace_id, reason, message, stage, source_topic, source_partition, source_offset, "
    "length(original) AS original_bytes, failed_at, topic"
)


def _where(reasons: tuple[str, ...], stages: tuple[str, ...]) -> tuple[list[str], dict]:
    conditions, params = [], {}
    if reasons:
        conditions.append("reason IN {reasons:Array(String)}")
        params["reasons"] = list(reasons)
    if stages:
        conditions.append("stage IN {stages:Array(String)}")
        params["stages"] = list(stages)
    return conditions, params


def list_page(warehouse: Warehouse, topic: str, after: Cursor, limit: int, reasons: tuple[str, ...],
              stages: tuple[str, ...]) -> keyset.Run:
    """The first ``limit`` dead letters after ``after`` in its order (the original bytes left out).

    Merged across partitions as ``queries.traces.list_page`` is.
    """
    conditions, params = _where(reasons, stages)
    return keyset.run(warehouse, "dlq", _COLUMNS, topic, after, limit, conditions, params)


def counts(warehouse: Warehouse, stages: tuple[str, ...] = ()) -> bytes:
    """JSONEachRow rows ``{stage, reason, count}`` over every dead letter."""
    conditions, params = _where((), stages)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (f"SELECT stage, reason, count() AS count FROM {{db:Identifier}}.dlq FINAL {where} "
           "GROUP BY stage, reason ORDER BY count DESC, stage, reason")
    return warehouse.query_json(sql, {**params, "db": warehouse.database})
