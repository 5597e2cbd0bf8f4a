"""Run the processors as one faust worker process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import faust
from mode import Service

from deploy.kafka_clients import KafkaClients
from deploy.quiet_logs import quiet_kafka_retries
from deploy.settings import Settings
from kafkalog.groups import STAGES
from kafkalog.lag import ClusterOffsets
from streams.app import Processors, build_app
from streams.catchup import wait_until_caught_up
from streams.stats import lag_stats, warehouse_stats
from streams.topics import ensure_pipeline_topics

log = logging.getLogger(__name__)


class OffsetsService(Service):
    """One admin client and consumer for the worker's life, for /stats (a page load is not a new connection)."""

    def __init__(self, kafka: KafkaClients) -> None:
        super().__init__()
        self.offsets = ClusterOffsets(kafka)  # its clients start on first use, in the worker's loop

    async def on_stop(self) -> None:
        await self.offsets.close()


def run_worker(
    settings: Settings, kafka: KafkaClients, *, stages: tuple[str, ...] = STAGES, until_caught_up: bool = False,
    loglevel: str = "warning", web: bool = True, services: Callable[[Processors], Iterable[Service]] | None = None,
) -> None:
    """Serve the processors until stopped (SIGTERM/SIGINT), or until caught up.

    With ``until_caught_up`` the worker stops itself, through the same graceful
    path as SIGTERM (so the last commits happen), once the stages it runs have
    committed what was in the log when it started. ``services`` makes more
    services to run in the worker (``tracestream serve`` adds the API), started
    after the processors and stopped before them.

    Raises:
        StageFailed: a stage met an error it could not recover from (the
            message names the topic and partitions); the worker stopped.
    """
    asyncio.run(ensure_pipeline_topics(settings, kafka))
    asyncio.set_event_loop(asyncio.new_event_loop())
    processors = build_app(settings, kafka, stages=stages, web=web)
    app, writer = processors.app, processors.writer
    for service in services(processors) if services else ():
        app.add_dependency(service)

    offsets = OffsetsService(kafka)
    app.add_dependency(offsets)

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        body = await writer.run(warehouse_stats) if writer is not None else {}
        body["lag"] = await lag_stats(settings, offsets.offsets)
        body["worker"] = dict(processors.counters(), pid=os.getpid(), stages=list(stages))
        return web.json(body)

    @app.page("/healthz")
    async def health_page(web: Any, request: Any) -> Any:
        return web.json(
            {"status": "ok", "pid": os.getpid(), "stages": list(stages),
             "assigned_partitions": processors.assigned_partitions()}
        )

    @app.task
    async def readable_logs() -> None:
        quiet_kafka_retries()  # faust's worker has set its handlers up by now

    if until_caught_up:

        @app.task
        async def stop_when_caught_up() -> None:
            await wait_until_caught_up(settings, kafka, stages=stages)
            log.info("caught up; stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        if writer is not None:
            writer.close()
    failure = processors.failure()
    if failure is not None:
        raise failure
