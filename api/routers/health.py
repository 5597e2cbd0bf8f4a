"""GET /healthz (the process answers), /readyz (Kafka and the warehouse answer), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Response

from api.deps import StateDep
from api.errors import ERROR_SCHEMA, error_response
from kafkalog.lag import ClusterOffsets

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}


async def _kafka(offsets: ClusterOffsets | None) -> str | None:
    """None when the cluster answers a metadata request (on the app's long-lived admin client), else why not."""
    if offsets is None:
        return "no Kafka bootstrap is configured (TRACESTREAM_KAFKA_BOOTSTRAP)"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await (await offsets.admin()).describe_cluster()
        return None
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the answer is "not reachable, because ..."
        return f"Kafka at {offsets.kafka.bootstrap} does not answer: {type(exc).__name__}: {exc}".rstrip(": ")


async def _warehouse(state) -> str | None:
    try:
        await asyncio.wait_for(state.reader.run(lambda w: w.query("SELECT 1")), CHECK_TIMEOUT_S)
        return None
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the answer is "not reachable, because ..."
        return f"the warehouse does not answer: {type(exc).__name__}: {exc}"


@router.get("/readyz", summary="Kafka and the warehouse are reachable",
            responses={503: {"content": {"application/json": {"schema": ERROR_SCHEMA}},
                             "description": "Which dependency is not reachable, and why."}})
async def readyz(state: StateDep) -> Any:
    kafka, warehouse = await asyncio.gather(_kafka(state.offsets), _warehouse(state))
    checks = {"kafka": kafka, "warehouse": warehouse}
    failing = [name for name, problem in checks.items() if problem]
    if failing:
        return error_response(503, "not_ready", f"not ready: {', '.join(failing)} unreachable",
                              [{"component": name, "message": checks[name]} for name in failing])
    return {"status": "ready", "checks": {name: "ok" for name in checks}}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: StateDep) -> Response:
    state.metrics.cache_hits.set(state.reader.hits)
    state.metrics.cache_misses.set(state.reader.misses)
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
