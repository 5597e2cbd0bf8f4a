"""One keyset page of a table keyed by (topic, partition, offset), in key order."""

from __future__ import annotations

from typing import Any

from api.cursor import Position
from warehouse.client import Warehouse

# The rest of the cursor's partition, then the partitions above it: ClickHouse prunes granules
# by `partition = p AND offset > o` and by `partition > p`, but not by a tuple comparison,
# which would read the whole table for a deep cursor.
_POSITIONS = ("partition = {p:UInt32} AND offset > {o:Int64}", "partition > {p:UInt32}")


def page(warehouse: Warehouse, table: str, columns: str, topic: str, after: Position, limit: int,
         conditions: list[str], params: dict[str, Any]) -> bytes:
    """JSONEachRow rows of up to ``limit`` rows of ``table`` after ``after`` that meet ``conditions``."""
    params = {**params, "db": warehouse.database, "topic": topic, "p": after.partition, "o": after.offset}
    rows = b""
    for position in _POSITIONS:
        wanted = limit - rows.count(b"\n")
        if wanted <= 0:
            break
        sql = (f"SELECT {columns} FROM {{db:Identifier}}.{table} FINAL "
               f"WHERE {' AND '.join(['topic = {topic:String}', position, *conditions])} "
               "ORDER BY topic, partition, offset LIMIT {limit:UInt32}")
        rows += warehouse.query_json(sql, {**params, "limit": wanted})
    return rows
