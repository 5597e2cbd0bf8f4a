"""GET /api/stats: ingest rate over recent windows, consumer lag per group and partition, DLQ counts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter

from api.deps import Readable, ReaderDep, SettingsDep, StateDep
from api.queries import dlq
from api.queries import stats as q
from api.queries.jsonrows import decode_rows
from streams.stats import lag_stats

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/stats", tags=["stats"], dependencies=[Readable])

LAG_TIMEOUT_S = 5.0


@router.get("", summary="Ingest rates, consumer lag, dead letters")
async def stats(reader: ReaderDep, settings: SettingsDep, state: StateDep) -> dict[str, Any]:
    """Rows materialized per second over 1/5/15 minutes (and per minute for the last hour),
    lag of the processors' consumer groups per partition (``null`` with a reason when Kafka
    does not answer), and dead letters by stage and reason."""
    rates, counts = await reader.run(lambda w: (q.ingest_rates(w), decode_rows(dlq.counts(w))))
    body: dict[str, Any] = {"ingest": rates, "dead_letters_by_reason": counts,
                            "dead_letters": sum(c["count"] for c in counts), "lag": None, "lag_error": None}
    if state.offsets is not None:
        try:
            body["lag"] = await asyncio.wait_for(lag_stats(settings, state.offsets), LAG_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Kafka unreachable must not hide the warehouse figures
            body["lag_error"] = f"consumer lag unavailable from {state.offsets.kafka.bootstrap}: {type(exc).__name__}: {exc}"
    else:
        body["lag_error"] = "no Kafka bootstrap configured"
    return body
