"""What the warehouse holds and how far behind the processors are."""

from __future__ import annotations

from typing import Any

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.groups import materialize_group, validate_group
from kafkalog.lag import ClusterOffsets
from warehouse.client import Warehouse


def warehouse_stats(warehouse: Warehouse) -> dict[str, Any]:
    """Counts from the warehouse, deduplicated (FINAL) as every reader must."""
    db = warehouse.database
    by_source = warehouse.query(
        f"SELECT source, trace_version, schema_version, count() FROM `{db}`.traces FINAL "
        "GROUP BY source, trace_version, schema_version ORDER BY source, trace_version, schema_version"
    )
    by_reason = warehouse.query(
        f"SELECT stage, reason, count() FROM `{db}`.dlq FINAL GROUP BY stage, reason ORDER BY stage, reason"
    )
    (distinct,) = warehouse.query(f"SELECT uniqExact(trace_id) FROM `{db}`.traces FINAL")[0]
    return {
        "warehouse": warehouse.description,
        "distinct_trace_ids": distinct,
        "traces": sum(row[3] for row in by_source),
        "traces_by_source": [
            {"source": s, "trace_version": tv, "schema_version": sv, "count": n} for s, tv, sv, n in by_source
        ],
        "dead_letters": sum(row[2] for row in by_reason),
        "dead_letters_by_reason": [{"stage": st, "reason": r, "count": n} for st, r, n in by_reason],
    }


async def lag_stats(settings: Settings, kafka: KafkaClients | ClusterOffsets) -> list[dict[str, Any]]:
    """Both processors' lag; a service asking often passes its long-lived ``ClusterOffsets``."""
    if not isinstance(kafka, ClusterOffsets):
        async with ClusterOffsets(kafka) as offsets:
            return await lag_stats(settings, offsets)
    topics = settings.topics
    lags = [
        *await kafka.group_lag(validate_group(settings), [topics.raw]),
        *await kafka.group_lag(materialize_group(settings), list(topics.materialized)),
    ]
    return [{**lag._asdict(), "lag": lag.lag} for lag in lags]
