"""Dataset versions as the warehouse holds them: the latest event of each (name, version)."""

from __future__ import annotations

import json
from typing import Any

from warehouse.client import Warehouse

_SQL = (
    "SELECT name, version, event_type, record_count, train_count, eval_count, content_sha256, manifest, error, "
    "at, partition, offset FROM {db:Identifier}.datasets FINAL {where} ORDER BY topic, partition, offset"
)


def versions(warehouse: Warehouse, name: str | None = None) -> list[dict[str, Any]]:
    """Every dataset version (or every version of ``name``), its last event winning, by name and version.

    The events of one name share a partition (the name is the key), so
    partition order is log order.
    """
    params: dict[str, Any] = {"db": warehouse.database}
    where = ""
    if name is not None:
        where, params["name"] = "WHERE name = {name:String}", name
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in warehouse.query(_SQL.replace("{where}", where), params):
        (ds_name, version, event_type, records, train, eval_, sha, manifest, error, at, partition, offset) = row
        latest[(ds_name, version)] = {
            "name": ds_name, "version": version, "status": event_type, "record_count": records,
            "train_count": train, "eval_count": eval_, "content_sha256": sha, "error": error,
            "updated_at": at.isoformat().replace("+00:00", "Z") if at.tzinfo else at.isoformat() + "Z",
            "manifest": json.loads(manifest),
            "event": {"partition": partition, "offset": offset},
        }
    return [latest[key] for key in sorted(latest)]
