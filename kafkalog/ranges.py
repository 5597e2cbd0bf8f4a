"""Read exact offset ranges from Kafka: dataset replay.

A dataset names ``[start, end)`` per partition of ``traces.valid``; reading
it means reading exactly those offsets, in (partition, offset) order. One
group-less consumer reads the partitions one after another: ``assign``,
``seek`` to ``start``, ``getmany`` until the consumer's position reaches
``end``. The position, not the last record seen, says when a partition is
done, so offset gaps (transaction markers, aborted records) are fine.
Records at or past ``end`` are dropped; the reader never reads "until
latest". Each partition is read by the one range reader,
``kafkalog.log.read_range_batches``.

Before anything is yielded every range is checked against the log: a range
whose start was deleted by retention raises ``RangeExpiredError``, one that
ends past the high watermark raises ``RangeBeyondEndError``. So a caller
gets either the whole dataset or an error, never a silently shorter one.

Each yielded record is the "dataset record" (see ``dataset.hashing``): the
trace as decoded to the latest ``Trace`` schema, plus ``topic``,
``partition`` and ``offset``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from deploy.kafka_clients import KafkaClients
from kafkalog.errors import RangeBeyondEndError, RangeExpiredError
from kafkalog.lag import topic_partitions
from kafkalog.log import decode_records, start_range_consumer
from kafkalog.log import read_range_batches as read_partition_range
from schemas.contracts import TRACE

if TYPE_CHECKING:
    from dataset.ranges import OffsetRange
    from schemas.codec import AvroCodec

"""The record type of traces.valid (``streams.validate.TRACE``; consumers do not import streams)."""


def ordered_ranges(ranges: Sequence[OffsetRange]) -> list[OffsetRange]:
    """``ranges`` sorted by (topic, partition, start), the order both readers read in.

    Raises:
        ValueError: a range has negative offsets or starts after it ends, or two ranges of one partition overlap
            (their records would be read twice).
    """
    out = sorted(ranges, key=lambda r: (r.topic, r.partition, r.start, r.end))
    for r in out:
        if r.partition < 0 or r.start < 0 or r.end < r.start:
            raise ValueError(
                f"offset range {r.topic}[{r.partition}]@[{r.start}, {r.end}) is malformed; "
                "give [start, end) with 0 <= start <= end"
            )
    for a, b in zip(out, out[1:]):
        if (a.topic, a.partition) == (b.topic, b.partition) and b.start < a.end:
            raise ValueError(
                f"offset ranges [{a.start}, {a.end}) and [{b.start}, {b.end}) of {a.topic}[{a.partition}] overlap; "
                "each offset may be named once"
            )
    return out


async def _started(kafka: KafkaClients) -> AIOKafkaConsumer:
    return await start_range_consumer(kafka)


def _expired(r: OffsetRange, log_start: int, first_missing: int | None = None) -> RangeExpiredError:
    first_missing = r.start if first_missing is None else first_missing
    missing_end = min(log_start, r.end)
    return RangeExpiredError(
        f"offsets [{first_missing}, {missing_end}) of {r.topic}[{r.partition}] were deleted by retention "
        f"(the log now starts at {log_start}), so the range [{r.start}, {r.end}) cannot be replayed; "
        "read it from the warehouse, or give the topic retention.ms=-1 so datasets keep their data"
    )


async def _check(kafka: KafkaClients, consumer: AIOKafkaConsumer, ranges: Sequence[OffsetRange]) -> None:
    """Raise unless every (non-empty) range lies within the log as it is now."""
    existing: dict[str, set[int]] = {}
    for tp in await topic_partitions(kafka, {r.topic for r in ranges}):
        existing.setdefault(tp.topic, set()).add(tp.partition)
    for r in ranges:
        partitions = existing.get(r.topic)
        if not partitions or r.partition not in partitions:
            have = f"partitions {sorted(partitions)}" if partitions else "no such topic"
            raise RangeBeyondEndError(
                f"{r.topic}[{r.partition}] does not exist ({r.topic}: {have}), so the range "
                f"[{r.start}, {r.end}) cannot be read"
            )
    tps = sorted({TopicPartition(r.topic, r.partition) for r in ranges})
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)  # the last stable offset, as read_committed sees it
    for r in ranges:
        tp = TopicPartition(r.topic, r.partition)
        if r.end > ends[tp]:
            raise RangeBeyondEndError(
                f"the range [{r.start}, {r.end}) of {r.topic}[{r.partition}] ends at {r.end}, past the "
                f"high watermark {ends[tp]}; a dataset can only name offsets that exist (is this the "
                "cluster and topic the manifest was made on?)"
            )
        if r.start < starts[tp]:
            raise _expired(r, starts[tp])


async def check_ranges(kafka: KafkaClients, ranges: Sequence[OffsetRange]) -> None:
    """Raise ``RangeExpiredError`` / ``RangeBeyondEndError`` unless every range can be replayed now."""
    ranges = [r for r in ordered_ranges(ranges) if r.end > r.start]
    if not ranges:
        return
    consumer = await _started(kafka)
    try:
        await _check(kafka, consumer, ranges)
    finally:
        await consumer.stop()


async def read_range_batches_raw(
    kafka: KafkaClients,
    ranges: Sequence[OffsetRange],
    *,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[list[ConsumerRecord]]:
    """The records of ``ranges``, undecoded, in (partition, offset) order, in batches of at most ``batch_records``.

    Raises:
        RangeExpiredError: a range starts before the log start offset (retention deleted it).
        RangeBeyondEndError: a range ends past the high watermark, or its partition does not exist.
        RangeReadStalled: the broker returned nothing for ``stall_timeout_s`` before a range was done.
        ValueError: malformed or overlapping ranges.
    """
    ranges = [r for r in ordered_ranges(ranges) if r.end > r.start]
    if not ranges:
        return
    consumer = await _started(kafka)
    try:
        await _check(kafka, consumer, ranges)
        for r in ranges:
            tp = TopicPartition(r.topic, r.partition)
            async for batch in read_partition_range(consumer, tp, r.start, r.end, batch_records=batch_records,
                                                    stall_timeout_s=stall_timeout_s):
                yield batch
    finally:
        await consumer.stop()


async def read_ranges_raw(
    kafka: KafkaClients,
    ranges: Sequence[OffsetRange],
    *,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[ConsumerRecord]:
    """Like ``read_range_batches_raw``, one record at a time."""
    async for batch in read_range_batches_raw(
        kafka, ranges, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        for message in batch:
            yield message


def decode_batch(messages: Sequence[ConsumerRecord], codec: AvroCodec) -> list[dict]:
    """Dataset records of traces.valid messages.

    Raises:
        DecodeError: a message is not a decodable ``Trace`` (its message names ``topic[partition]@offset``).
    """
    decode = codec.decode_latest

    def record_of(message: ConsumerRecord) -> dict:
        record = decode(message.value or b"", TRACE)[0]
        record["topic"] = message.topic
        record["partition"] = message.partition
        record["offset"] = message.offset
        return record

    return decode_records(messages, record_of)


async def read_range_batches(
    kafka: KafkaClients,
    ranges: Sequence[OffsetRange],
    *,
    codec: AvroCodec | None = None,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[list[dict]]:
    """Dataset records of ``ranges`` in (partition, offset) order, in lists of at most ``batch_records``."""
    if codec is None:
        from schemas.codec import AvroCodec
        from schemas.registry import default_registry

        codec = AvroCodec(default_registry())
    async for batch in read_range_batches_raw(
        kafka, ranges, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        yield decode_batch(batch, codec)


async def read_ranges(
    kafka: KafkaClients,
    ranges: Sequence[OffsetRange],
    *,
    codec: AvroCodec | None = None,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[dict]:
    """Dataset records of exactly ``ranges``, in (partition, offset) order.

    Every range is checked first, so nothing is yielded for a dataset that
    cannot be read whole. Close the iterator (``contextlib.aclosing``) when
    stopping early, so its consumer stops at once.

    Args:
        kafka: the cluster (``KafkaClients``).
        ranges: ``[start, end)`` offset ranges (``dataset.ranges.OffsetRange``), in any order.
        codec: decodes the values; one on the default registry when None.
        batch_records: most records fetched per poll.
        stall_timeout_s: give up when the broker returns nothing for this long mid-range.

    Raises:
        RangeExpiredError: a range starts before the log start offset (retention deleted it).
        RangeBeyondEndError: a range ends past the high watermark, or its partition does not exist.
        RangeReadStalled: no progress for ``stall_timeout_s``.
        DecodeError: a record is not a decodable ``Trace``.
        ValueError: malformed or overlapping ranges.
    """
    async for batch in read_range_batches(
        kafka, ranges, codec=codec, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        for record in batch:
            yield record
