"""Build the FastAPI application: the read API, the ingest door and the dashboard page.

Nothing happens at import time: ``create_app`` takes the settings and wires
one router per resource. The API opens its own ``Warehouse`` on first use; in
``tracestream serve`` that is the processors' process, where the embedded
chDB client is opened once and shared (``warehouse.client``), so the API and
the materializer use one client and their calls take turns.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiokafka.errors import KafkaError
from fastapi import FastAPI

import api.dashboard
from api.body_limit import BodyLimitMiddleware
from api.deps import ApiState
from api.errors import install_handlers
from api.fastlane import TraceFastLane
from api.metrics import ApiMetrics, MetricsMiddleware
from api.reader import WarehouseReader
from api.routers import (
    datasets,
    dlq,
    evaluations,
    health,
    models,
    runs,
    session,
    stats,
    traces,
    tunes,
)
from api.routers import ingest as ingest_routes
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from ingest.publisher import Publisher
from schemas.errors import TracestreamError
from warehouse.client import Warehouse

log = logging.getLogger(__name__)

DESCRIPTION = """\
Read API over the tracestream warehouse, and the HTTP door to `traces.raw`.

* Lists page with an opaque `cursor` (keyset on the log order), never OFFSET.
* Every error has one shape: `{"error": {"code", "message", "details": [...]}}`.
* `POST /api/traces*` needs `Authorization: Bearer <TRACESTREAM_API_TOKEN>` when a token is set;
  reads are open unless `TRACESTREAM_API_PROTECT_READS` is set.
"""


def create_app(
    settings: Settings,
    *,
    warehouse: Warehouse | None = None,
    warehouse_factory: Callable[[], Warehouse] | None = None,
    kafka: KafkaClients | None = None,
    ingest: bool = True,
) -> FastAPI:
    """The API for ``settings``.

    Args:
        settings: the process's settings.
        warehouse: an open warehouse to use (tests pass one); otherwise
            ``warehouse_factory`` (default: ``Warehouse.connect(settings)``, which
            in ``tracestream serve`` shares the process's chDB client with the
            processors) opens one on first use.
        kafka: the Kafka cluster; defaults to ``settings.kafka_bootstrap`` with the settings' security.
        ingest: start the ingest door's producer (needs Kafka at start-up).
    """
    if warehouse is not None:
        factory = lambda: warehouse
    else:
        factory = warehouse_factory or (lambda: Warehouse.connect(settings))
    state = ApiState(
        settings=settings,
        reader=WarehouseReader(factory, cache_entries=settings.api_cache_entries),
        kafka=kafka or (KafkaClients.from_settings(settings, settings.kafka_bootstrap)
                        if settings.kafka_bootstrap else None),
        metrics=ApiMetrics(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ingest and state.kafka is not None:
            publisher = Publisher(settings, state.kafka)
            try:
                await publisher.start()
                state.publisher = publisher
            except (KafkaError, OSError, TracestreamError) as exc:  # reads still work; the door answers 503 saying why
                log.error("ingest door disabled: cannot start a Kafka producer on %s: %s", state.kafka.bootstrap, exc)
        try:
            yield
        finally:
            if state.publisher is not None:
                await state.publisher.stop()
                state.publisher = None
            if state.offsets is not None:
                await state.offsets.close()
            state.reader.close()

    app = FastAPI(title="tracestream", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.api = state
    install_handlers(app)
    for module in (traces, ingest_routes, dlq, datasets, runs, models, tunes, evaluations, stats, health, session):
        app.include_router(module.router)
    app.include_router(api.dashboard.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(TraceFastLane, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app

