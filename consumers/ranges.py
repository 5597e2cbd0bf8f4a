"""Read exact offset ranges from Kafka: dataset replay.

A dataset names ``[start, end)`` per partition of ``traces.valid``; reading
it means reading exactly those offsets, in (partition, offset) order. One
group-less consumer reads the partitions one after another: ``assign``,
``seek`` to ``start``, ``getmany`` until the consumer's position reaches
``end``. The position, not the last record seen, says when a partition is
done, so offset gaps (transaction markers, aborted records) are fine.
Records at or past ``end`` are dropped; the reader never reads "until
latest".

Before anything is yielded every range is checked against the log: a range
whose start was deleted by retention raises ``RangeExpiredError``, one that
ends past the high watermark raises ``RangeBeyondEndError``. So a caller
gets either the whole dataset or an error, never a silently shorter one.

Each yielded record is the "dataset record" (see ``schemas.dataset``): the
trace as decoded to the latest ``Trace`` schema, plus ``topic``,
``partition`` and ``offset``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord

from consumers.errors import RangeBeyondEndError, RangeExpiredError, RangeReadStalled
from consumers.lag import topic_partitions
from schemas.errors import DecodeError

if TYPE_CHECKING:
    from schemas.codec import AvroCodec
    from schemas.dataset import OffsetRange

TRACE = "Trace"
"""The record type of traces.valid (``streams.validate.TRACE``; consumers do not import streams)."""

_MiB = 1 << 20
_POLL_MS = 200
_offset = attrgetter("offset")


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


def _range_consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
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


async def _started(bootstrap: str) -> AIOKafkaConsumer:
    consumer = _range_consumer(bootstrap)
    await consumer.start()
    # aiokafka's group-less coordinator starts a task that its stop() awaits after cancelling it; cancelled
    # before it first ran, that await raises CancelledError. One turn of the loop lets it start.
    await asyncio.sleep(0)
    return consumer


def _expired(r: OffsetRange, log_start: int, first_missing: int | None = None) -> RangeExpiredError:
    first_missing = r.start if first_missing is None else first_missing
    missing_end = min(log_start, r.end)
    return RangeExpiredError(
        f"offsets [{first_missing}, {missing_end}) of {r.topic}[{r.partition}] were deleted by retention "
        f"(the log now starts at {log_start}), so the range [{r.start}, {r.end}) cannot be replayed; "
        "read it from the warehouse, or give the topic retention.ms=-1 so datasets keep their data"
    )


async def _check(bootstrap: str, consumer: AIOKafkaConsumer, ranges: Sequence[OffsetRange]) -> None:
    """Raise unless every (non-empty) range lies within the log as it is now."""
    existing: dict[str, set[int]] = {}
    for tp in await topic_partitions(bootstrap, {r.topic for r in ranges}):
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


async def check_ranges(bootstrap: str, ranges: Sequence[OffsetRange]) -> None:
    """Raise ``RangeExpiredError`` / ``RangeBeyondEndError`` unless every range can be replayed now."""
    ranges = [r for r in ordered_ranges(ranges) if r.end > r.start]
    if not ranges:
        return
    consumer = await _started(bootstrap)
    try:
        await _check(bootstrap, consumer, ranges)
    finally:
        await consumer.stop()


async def _read_range(
    consumer: AIOKafkaConsumer, r: OffsetRange, batch_records: int, stall_timeout_s: float
) -> AsyncIterator[list[ConsumerRecord]]:
    tp = TopicPartition(r.topic, r.partition)
    end = r.end
    consumer.assign([tp])
    consumer.seek(tp, r.start)
    progress_at, last_position = time.monotonic(), r.start
    while True:
        try:
            fetched = await consumer.getmany(tp, timeout_ms=_POLL_MS, max_records=batch_records)
        except OffsetOutOfRangeError:
            # Retention moved the log start past our position after the check (mid-read).
            log_start = (await consumer.beginning_offsets([tp]))[tp]
            raise _expired(r, log_start, first_missing=last_position) from None
        records = fetched.get(tp)
        if records:
            last = records[-1].offset
            last_position = max(last_position, min(last + 1, end))
            if last >= end:
                records = records[: bisect_left(records, end, key=_offset)]
                if records:
                    yield records
                return
            yield records
            if last == end - 1:
                return
        position = await consumer.position(tp)
        if position >= end:
            return
        now = time.monotonic()
        if position > last_position or records:
            progress_at, last_position = now, max(position, last_position)
        elif now - progress_at > stall_timeout_s:
            raise RangeReadStalled(
                f"no progress reading {r.topic}[{r.partition}] at offset {position} for {stall_timeout_s:.0f}s "
                f"(range [{r.start}, {end})); is the broker reachable?"
            )


async def read_range_batches_raw(
    bootstrap: str,
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
    consumer = await _started(bootstrap)
    try:
        await _check(bootstrap, consumer, ranges)
        for r in ranges:
            async for batch in _read_range(consumer, r, batch_records, stall_timeout_s):
                yield batch
    finally:
        await consumer.stop()


async def read_ranges_raw(
    bootstrap: str,
    ranges: Sequence[OffsetRange],
    *,
    batch_records: int = 5000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[ConsumerRecord]:
    """Like ``read_range_batches_raw``, one record at a time."""
    async for batch in read_range_batches_raw(
        bootstrap, ranges, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        for message in batch:
            yield message


def decode_batch(messages: Sequence[ConsumerRecord], codec: AvroCodec) -> list[dict]:
    """Dataset records of traces.valid messages.

    Raises:
        DecodeError: a message is not a decodable ``Trace`` (a note names its coordinates).
    """
    decode = codec.decode_latest
    out: list[dict] = []
    append = out.append
    for message in messages:
        try:
            record = decode(message.value or b"", TRACE)[0]
        except DecodeError as exc:
            exc.add_note(f"at {message.topic}[{message.partition}]@{message.offset}")
            raise
        record["topic"] = message.topic
        record["partition"] = message.partition
        record["offset"] = message.offset
        append(record)
    return out


async def read_range_batches(
    bootstrap: str,
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
        bootstrap, ranges, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        yield decode_batch(batch, codec)


async def read_ranges(
    bootstrap: str,
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
        bootstrap: Kafka bootstrap servers, host:port[,host:port].
        ranges: ``[start, end)`` offset ranges (``schemas.dataset.OffsetRange``), in any order.
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
        bootstrap, ranges, codec=codec, batch_records=batch_records, stall_timeout_s=stall_timeout_s
    ):
        for record in batch:
            yield record
