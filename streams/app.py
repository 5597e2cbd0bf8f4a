"""The faust app: validate, materialize and dead-letter agents, and the stats page.

The agents are thin: the rules live in ``streams.validate`` and the row
building and retrying in ``streams.materialize``. Batches come from
``take_events``, which acks (and so lets faust commit) a batch only after the
loop body has finished with it, i.e. after its rows are durable or its output
is handed to the producer (faust flushes the producer before every commit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import faust

from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from aiokafka import TopicPartition

from consumers.lag import committed_offsets
from streams.coordinates import Coordinates
from streams.resume import produced_since, source_headers
from streams.materialize import BatchWriter, InboundEvent, dead_letter_rows, trace_rows, utc_now
from streams.validate import WRITER_VERSION_HEADER, Accepted, Rejected, Validator
from warehouse.client import Warehouse

log = logging.getLogger(__name__)

# Big enough for a dead letter that carries an oversized original event.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class Counters:
    """What this worker has done since it started (exposed on /stats)."""

    validated: int = 0
    dead_lettered: int = 0
    traces_written: int = 0
    dead_letters_written: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def build_app(
    settings: Settings,
    bootstrap: str,
    *,
    warehouse_factory: Callable[[], Warehouse] | None = None,
) -> tuple[faust.App, BatchWriter, Counters]:
    """Wire the processors for one worker.

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
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        topic_allow_declare=False,  # `streams.topics.ensure_topics` declares ours, with their retention
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_seconds,
        producer_acks=-1,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    raw_topic = app.topic(topics.raw, key_type=bytes, value_type=bytes)
    valid_topic = app.topic(topics.valid, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(topics.dlq, key_type=bytes, value_type=bytes)
    validator = Validator(codec, max_event_bytes=settings.max_event_bytes)
    writer = BatchWriter(
        warehouse_factory or (lambda: Warehouse.connect(settings)),
        codec,
        retry_max_seconds=settings.warehouse_retry_max_seconds,
    )
    counters = Counters()
    batch_size = settings.materialize_batch_size
    within = settings.materialize_batch_seconds

    async def send_dead_letter(dead: Rejected, at: Coordinates, partition: int | None = None) -> None:
        counters.dead_lettered += 1
        counters.by_reason[dead.reason] = counters.by_reason.get(dead.reason, 0) + 1
        await dlq_topic.send(
            key=dead.key, value=dead.payload, partition=partition, headers=source_headers(at.topic, at.offset)
        )

    # Raw offsets already turned into output before the last crash, per raw partition.
    already_produced: dict[int, set[int]] = {}

    @app.on_partitions_assigned.connect
    async def forget_resume_points(sender: object, assigned: set, **kwargs: object) -> None:
        for tp in assigned:
            if tp.topic == topics.raw:
                already_produced.pop(tp.partition, None)

    async def skip_set(partition: int) -> set[int]:
        if partition not in already_produced:
            committed = (await committed_offsets(bootstrap, settings.app_id)).get(
                TopicPartition(topics.raw, partition), 0
            )
            already_produced[partition] = await produced_since(
                bootstrap, source_topic=topics.raw, partition=partition, committed=committed,
                output_topics=(topics.valid, topics.dlq),
            )
            if already_produced[partition]:
                log.warning("%s[%d]: %d records past the committed offset %d were already validated "
                            "before a restart; skipping them", topics.raw, partition,
                            len(already_produced[partition]), committed)
        return already_produced[partition]

    @app.agent(raw_topic, name="validate")
    async def validate(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_size, within=within):
            for event in events:
                message = event.message
                at = _coordinates(message)
                skip = await skip_set(at.partition)
                if skip and at.offset in skip:
                    skip.discard(at.offset)
                    continue
                outcome = validator(message.value, message.key, at)
                # Output stays in the source partition, in source order: that is what makes
                # `produced_since` exact after a crash.
                if isinstance(outcome, Accepted):
                    counters.validated += 1
                    await valid_topic.send(
                        key=outcome.key,
                        value=outcome.payload,
                        partition=at.partition,
                        headers={
                            WRITER_VERSION_HEADER: str(outcome.writer_version).encode(),
                            **source_headers(at.topic, at.offset),
                        },
                    )
                else:
                    await send_dead_letter(outcome, at, partition=at.partition)

    @app.agent(valid_topic, name="materialize")
    async def materialize(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_size, within=within):
            batch = trace_rows([_inbound(e.message) for e in events], codec, utc_now())
            refused = await writer.write(batch)
            counters.traces_written += len(batch) - len(refused)
            for dead in [*batch.rejected, *refused]:
                await send_dead_letter(dead, dead.at)

    @app.agent(dlq_topic, name="materialize-dlq")
    async def materialize_dead_letters(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_size, within=within):
            batch = dead_letter_rows([_inbound(e.message) for e in events], codec, utc_now())
            refused = await writer.write(batch)
            for dead in refused:  # never expected: every dlq column is a plain string or number
                log.error("the warehouse refused the dead letter at %s; it stays in the log only", dead.at)
            counters.dead_letters_written += len(batch) - len(refused)

    return app, writer, counters


def _coordinates(message: faust.types.Message) -> Coordinates:
    return Coordinates(message.topic, message.partition, message.offset)


def _inbound(message: faust.types.Message) -> InboundEvent:
    return InboundEvent(
        at=_coordinates(message),
        key=message.key,
        value=message.value or b"",
        writer_version=_writer_version(message.headers),
    )


def _writer_version(headers: object) -> int | None:
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == WRITER_VERSION_HEADER:
            return int(value)
    return None
