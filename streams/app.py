"""The faust app of a worker: the validate and materialize stages, their producer, the web pages.

faust hosts the worker: process lifecycle and signals (``faust.Worker``),
service start/stop order, and the HTTP endpoints (/stats, /healthz). The
stages themselves are services that consume batches (``streams.stage``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.app.base import BootStrategy
from mode import Service

from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.materialize import BatchWriter, MaterializeStage
from streams.stage import MAX_MESSAGE_BYTES, StageRunner
from streams.topics import materialize_group, validate_group
from streams.validate import ValidateStage, Validator
from warehouse.client import Warehouse

log = logging.getLogger(__name__)


class StageHost(BootStrategy):
    """Boot the app without faust's own Kafka clients: the stages bring theirs."""

    enable_kafka = False


class ProducerService(Service):
    """The worker's one idempotent producer, started before the stages and stopped after them.

    The client is made in ``on_start`` because aiokafka clients belong to a running event loop.
    """

    def __init__(self, **producer_options: Any) -> None:
        super().__init__()
        self.options = producer_options
        self.producer: AIOKafkaProducer | None = None

    async def send(self, topic: str, value: bytes, *, key: bytes | None, partition: int | None = None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future:
        """Enqueue one record; the returned future settles when the broker has it."""
        assert self.producer is not None, "the producer service is not started"
        return await self.producer.send(topic, value, key=key, partition=partition, headers=headers)

    async def on_start(self) -> None:
        self.producer = AIOKafkaProducer(**self.options)
        await self.producer.start()

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


@dataclass
class Processors:
    """One worker's faust app and the parts tests and pages look into."""

    app: faust.App
    validate: ValidateStage
    materialize: MaterializeStage
    runners: tuple[StageRunner, ...]
    writer: BatchWriter

    def counters(self) -> dict[str, Any]:
        return {
            "validated": self.validate.validated,
            "dead_lettered": dict(self.validate.dead_lettered),
            "traces_written": self.materialize.traces_written,
            "dead_letters_written": self.materialize.dead_letters_written,
            "warehouse_outage_retries": self.writer.outage_retries,
        }

    def assigned_partitions(self) -> int:
        return sum(len(runner.consumer.assignment()) for runner in self.runners if runner.consumer)


def build_app(
    settings: Settings,
    bootstrap: str,
    *,
    warehouse_factory: Callable[[], Warehouse] | None = None,
) -> Processors:
    """Wire the processors of one worker.

    Args:
        settings: the process's settings.
        bootstrap: Kafka bootstrap servers, host:port[,host:port].
        warehouse_factory: opens the warehouse on the writer thread; tests pass
            one that fails on purpose to play an outage.
    """
    codec = AvroCodec(default_registry())
    topics = settings.topics
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        autodiscover=False,
        store="memory://",
        datadir=str(settings.home / "faust" / settings.app_id),
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    app.boot_strategy = StageHost(app)
    producer = ProducerService(
        bootstrap_servers=bootstrap,
        client_id=f"{settings.app_id}-worker",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    writer = BatchWriter(
        warehouse_factory or (lambda: Warehouse.connect(settings)),
        codec,
        retry_max_seconds=settings.warehouse_retry_max_seconds,
    )
    validate = ValidateStage(
        Validator(codec, max_event_bytes=settings.max_event_bytes), producer,
        bootstrap=bootstrap, group=validate_group(settings), raw=topics.raw, valid=topics.valid, dlq=topics.dlq,
    )
    materialize = MaterializeStage(
        writer, producer, codec, valid=topics.valid, dlq=topics.dlq, datasets=topics.datasets, runs=topics.runs
    )
    runner_options = {
        "bootstrap": bootstrap,
        "max_records": settings.materialize_batch_size,
        "wait_ms": int(settings.materialize_batch_seconds * 1000),
    }
    runners = (
        StageRunner(validate, group=validate_group(settings), **runner_options),
        StageRunner(materialize, group=materialize_group(settings), **runner_options),
    )
    app.add_dependency(producer)
    for runner in runners:
        app.add_dependency(runner)
    return Processors(app, validate, materialize, runners, writer)
