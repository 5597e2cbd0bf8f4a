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

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.groups import STAGES, materialize_group, validate_group
from schemas.codec import AvroCodec
from schemas.errors import ConfigurationError
from schemas.registry import default_registry
from streams.materialize import BatchWriter, MaterializeStage
from streams.stage import MAX_MESSAGE_BYTES, StageFailed, StageRunner
from streams.transactions import PartitionTransactions
from streams.validate import ValidateStage, Validator
from warehouse.client import Warehouse

log = logging.getLogger(__name__)


class StageHost(BootStrategy):
    """Boot the app without faust's own Kafka clients: the stages bring theirs."""

    enable_kafka = False


class ProducerService(Service):
    """The worker's one idempotent producer (materialize's dead letters), started before the stages and stopped after them.

    The client is made in ``on_start`` because aiokafka clients belong to a running event loop.
    """

    def __init__(self, kafka: KafkaClients, **producer_options: Any) -> None:
        super().__init__()
        self.kafka = kafka
        self.options = producer_options
        self.producer: AIOKafkaProducer | None = None

    async def send(self, topic: str, value: bytes, *, key: bytes | None, partition: int | None = None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future:
        """Enqueue one record; the returned future settles when the broker has it."""
        assert self.producer is not None, "the producer service is not started"
        return await self.producer.send(topic, value, key=key, partition=partition, headers=headers)

    async def on_start(self) -> None:
        self.producer = await self.kafka.start(self.kafka.producer(**self.options))

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


@dataclass
class Processors:
    """One worker's faust app and the parts tests and pages look into; a stage this worker does not run is None."""

    app: faust.App
    validate: ValidateStage | None
    materialize: MaterializeStage | None
    runners: tuple[StageRunner, ...]
    writer: BatchWriter | None

    def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        if self.validate is not None:
            transactions = self.validate.transactions
            counters.update(
                validated=self.validate.validated,
                dead_lettered=dict(self.validate.dead_lettered),
                transactions=transactions.transactions,
                transaction_ms_mean=round(1000 * transactions.transaction_seconds / max(1, transactions.transactions), 2),
            )
        if self.materialize is not None:
            counters.update(
                traces_written=self.materialize.traces_written,
                dead_letters_written=self.materialize.dead_letters_written,
                warehouse_outage_retries=self.writer.outage_retries,
            )
        return counters

    def assigned_partitions(self) -> int:
        return sum(len(runner.consumer.assignment()) for runner in self.runners if runner.consumer)

    def failure(self) -> StageFailed | None:
        """The error that stopped a stage, if one did."""
        return next((runner.failure for runner in self.runners if runner.failure is not None), None)


def build_app(
    settings: Settings,
    kafka: KafkaClients,
    *,
    stages: tuple[str, ...] = STAGES,
    web: bool = True,
    warehouse_factory: Callable[[], Warehouse] | None = None,
) -> Processors:
    """Wire the processors of one worker.

    Args:
        settings: the process's settings.
        kafka: the cluster and how to reach it.
        stages: which stages this process runs; validate needs no warehouse,
            so validate-only processes can run anywhere, any number of them.
        web: serve /stats and /healthz on settings.web_port.
        warehouse_factory: opens the warehouse on the writer thread; tests pass
            one that fails on purpose to play an outage.
    """
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise ConfigurationError(f"stages {sorted(unknown) or '(none)'}: choose from {', '.join(STAGES)}")
    codec = AvroCodec(default_registry())
    topics = settings.topics
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap.split(",")],
        autodiscover=False,
        store="memory://",
        datadir=str(settings.home / "faust" / settings.app_id),
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=web,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    app.boot_strategy = StageHost(app)
    runner_options = {
        "kafka": kafka,
        "max_records": settings.materialize_batch_size,
        "wait_ms": int(settings.materialize_batch_seconds * 1000),
    }
    output_options = dict(linger_ms=5, max_batch_size=1024 * 1024, max_request_size=MAX_MESSAGE_BYTES)
    validate = materialize = writer = None
    runners: list[StageRunner] = []
    if "validate" in stages:
        transactions = PartitionTransactions(kafka, group=validate_group(settings), **output_options)
        validate = ValidateStage(
            Validator(codec, max_event_bytes=settings.max_event_bytes), transactions,
            raw=topics.raw, valid=topics.valid, dlq=topics.dlq,
        )
        runners.append(StageRunner(validate, group=validate_group(settings), **runner_options))
    if "materialize" in stages:
        producer = ProducerService(
            kafka, client_id=f"{settings.app_id}-materialize", acks="all", enable_idempotence=True, **output_options
        )
        app.add_dependency(producer)
        writer = BatchWriter(
            warehouse_factory or (lambda: Warehouse.connect(settings)),
            codec,
            retry_max_seconds=settings.warehouse_retry_max_seconds,
        )
        materialize = MaterializeStage(
            writer, producer, codec, valid=topics.valid, dlq=topics.dlq, datasets=topics.datasets, runs=topics.runs,
            models=topics.models,
        )
        runners.append(StageRunner(materialize, group=materialize_group(settings), **runner_options))
    for runner in runners:
        app.add_dependency(runner)
    return Processors(app, validate, materialize, tuple(runners), writer)
