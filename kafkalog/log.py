"""The one range reader: offsets ``[start, end)`` of one partition, read_committed.

Everything that reads a stretch of a log goes through ``read_range_batches``:
dataset replay (``kafkalog.ranges``), small topics read whole
(``read_to_end``: datasets.events, runs.events), a run's own history
(``trainer.runlog``) and dead-letter replay. It stops when the consumer's
*position* reaches ``end``, not when it has seen the record at ``end - 1``:
under read_committed, transaction markers, aborted records and compacted
offsets leave gaps, and the position jumps past them without a record.
A record that does not decode raises its ``DecodeError`` again with
``topic[partition]@offset`` in the message, so whoever reads the error
knows which record to look at.
"""

from __future__ import annotations

import asyncio
import gc
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from operator import attrgetter
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord

from deploy.kafka_clients import KafkaClients
from kafkalog.errors import RangeExpiredError, RangeReadStalled
from kafkalog.lag import topic_partitions
from schemas.errors import DecodeError

T = TypeVar("T")
_MiB = 1 << 20
_POLL_MS = 200
_offset = attrgetter("offset")


def range_consumer(kafka: KafkaClients, **options) -> AIOKafkaConsumer:
    """A group-less read_committed consumer for ranges (not started); ``options`` override the defaults."""
    defaults = dict(
        client_id="tracestream-range-reader",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # Never jump elsewhere when an offset is gone: say it expired.
        auto_offset_reset="none",
        fetch_max_bytes=64 * _MiB,
        max_partition_fetch_bytes=32 * _MiB,
        # Every offset of a range exists already: never long-poll for more (it would delay the next partition).
        fetch_max_wait_ms=10,
        # The first offset lookup of a topic always waits one backoff for its metadata; keep it short.
        retry_backoff_ms=20,
    )
    return kafka.consumer(**{**defaults, **options})


async def start_range_consumer(kafka: KafkaClients, **options) -> AIOKafkaConsumer:
    """``range_consumer``, started."""
    consumer = await kafka.start(range_consumer(kafka, **options))
    # aiokafka's group-less coordinator starts a task that its stop() awaits after cancelling it; cancelled
    # before it first ran, that await raises CancelledError. One turn of the loop lets it start.
    await asyncio.sleep(0)
    return consumer


def located(exc: DecodeError, record: ConsumerRecord) -> DecodeError:
    """``exc`` with ``topic[partition]@offset`` of ``record`` at the front of its message (same class, same reason)."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    exc.args = (f"{where}: {exc}",)
    exc.topic, exc.partition, exc.offset = record.topic, record.partition, record.offset
    return exc


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused for a synchronous stretch that builds acyclic values.

    Decoding a batch allocates tens of containers per record (dicts, lists),
    none of them in a cycle; the collections they trigger (every 700
    allocations, over every live object once older generations are due) cost
    ~15-20% of a decode here and can free nothing. Use it only around code
    that does not await; the collector resumes as it was.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def decode_records(records: list[ConsumerRecord], decode: Callable[[ConsumerRecord], T]) -> list[T]:
    """``decode`` applied to each record (the collector paused); a ``DecodeError`` names the record's coordinates."""
    out: list[T] = []
    append = out.append
    with paused_gc():
        for record in records:
            try:
                append(decode(record))
            except DecodeError as exc:
                located(exc, record)
                raise
    return out


async def read_range_batches(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    *,
    decode: Callable[[ConsumerRecord], T] | None = None,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[list]:
    """The records of ``tp`` at offsets ``[start, end)``, in order, in lists of at most ``batch_records``.

    ``consumer`` is started and not in a group; it is assigned ``tp`` alone.
    With ``decode``, each list holds ``decode(record)`` instead of the records.

    Raises:
        RangeExpiredError: retention deleted offsets of the range (the consumer's auto_offset_reset is "none").
        RangeReadStalled: the broker returned nothing for ``stall_timeout_s`` before the range was done.
        DecodeError: ``decode`` failed; the message names ``topic[partition]@offset``.
    """
    if end <= start:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    progress_at, last_position = time.monotonic(), start
    while True:
        try:
            fetched = await consumer.getmany(tp, timeout_ms=_POLL_MS, max_records=batch_records)
        except OffsetOutOfRangeError:
            log_start = (await consumer.beginning_offsets([tp]))[tp]
            raise RangeExpiredError(
                f"offsets [{last_position}, {min(log_start, end)}) of {tp.topic}[{tp.partition}] were deleted by "
                f"retention (the log now starts at {log_start}), so the range [{start}, {end}) cannot be read "
                "whole; give the topic retention.ms=-1 to keep its data"
            ) from None
        records = fetched.get(tp)
        if records:
            last = records[-1].offset
            last_position = max(last_position, min(last + 1, end))
            done = last >= end - 1
            if last >= end:
                records = records[: bisect_left(records, end, key=_offset)]
            if records:
                yield records if decode is None else decode_records(records, decode)
            if done:
                return
        position = await consumer.position(tp)
        if position >= end:
            return
        now = time.monotonic()
        if position > last_position or records:
            progress_at, last_position = now, max(position, last_position)
        elif now - progress_at > stall_timeout_s:
            raise RangeReadStalled(
                f"no progress reading {tp.topic}[{tp.partition}] at offset {position} for {stall_timeout_s:.0f}s "
                f"(range [{start}, {end})); is the broker reachable?"
            )


async def read_range(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    *,
    decode: Callable[[ConsumerRecord], T] | None = None,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator:
    """``read_range_batches``, one record (or decoded value) at a time."""
    async for batch in read_range_batches(consumer, tp, start, end, decode=decode, stall_timeout_s=stall_timeout_s):
        for item in batch:
            yield item


async def read_to_end(
    kafka: KafkaClients, topic: str, decode: Callable[[ConsumerRecord], T] | None = None, *,
    since_ms: int | None = None,
) -> list:
    """Every committed record of ``topic`` below the end offsets seen at the call, partition by partition.

    With ``decode``, its results instead of the records (a ``DecodeError`` names the record's coordinates).
    With ``since_ms``, each partition starts at its first record timestamped at or after it.
    """
    partitions = await topic_partitions(kafka, [topic])
    if not partitions:
        return []
    consumer = await start_range_consumer(kafka, fetch_max_bytes=_MiB * 8, max_partition_fetch_bytes=_MiB * 8)
    try:
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            starts = {tp: ends[tp] if found[tp] is None else max(found[tp].offset, starts[tp]) for tp in partitions}
        out: list = []
        for tp in partitions:
            async for batch in read_range_batches(consumer, tp, starts[tp], ends[tp], decode=decode):
                out += batch
        return out
    finally:
        await consumer.stop()
