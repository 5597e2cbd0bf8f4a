"""Ingest rates over recent windows and dead-letter counts, from the warehouse."""

from __future__ import annotations

from typing import Any

from warehouse.client import Warehouse

WINDOWS_S = (60, 300, 900)

_RATE_SQL = (
    "SELECT countIf(ingested_at >= now64(3) - INTERVAL 60 SECOND), "
    "countIf(ingested_at >= now64(3) - INTERVAL 300 SECOND), "
    "countIf(ingested_at >= now64(3) - INTERVAL 900 SECOND), count() "
    "FROM {db:Identifier}.{table:Identifier} FINAL"
)

_PER_MINUTE_SQL = (
    "SELECT toStartOfMinute(ingested_at) AS minute, count() FROM {db:Identifier}.traces FINAL "
    "WHERE ingested_at >= now64(3) - INTERVAL {minutes:UInt32} MINUTE GROUP BY minute ORDER BY minute"
)


def ingest_rates(warehouse: Warehouse) -> dict[str, Any]:
    """Rows materialized per second over the last 1, 5 and 15 minutes, per table, and per minute for an hour."""
    out: dict[str, Any] = {}
    for table in ("traces", "dlq"):
        (*counts, total), = warehouse.query(_RATE_SQL, {"db": warehouse.database, "table": table})
        out[table] = {
            "total": total,
            "windows": [{"seconds": s, "rows": n, "per_second": round(n / s, 3)} for s, n in zip(WINDOWS_S, counts)],
        }
    out["traces_per_minute"] = [
        {"minute": minute.isoformat().replace("+00:00", "Z"), "rows": n}
        for minute, n in warehouse.query(_PER_MINUTE_SQL, {"db": warehouse.database, "minutes": 60})
    ]
    return out
