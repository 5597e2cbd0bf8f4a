"""Find what validate already produced after its last commit, so a restart repeats nothing.

validate is at-least-once: after a crash it re-reads raw records past its last
committed offset, some of which it had already turned into output. Every
output of raw partition p goes to partition p of traces.valid and traces.dlq,
in raw-offset order, with the raw offset in a header. So the tail of those two
partitions, back to the committed offset, names exactly the raw offsets to skip.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

SOURCE_OFFSET_HEADER = "tracestream-source-offset"
SOURCE_TOPIC_HEADER = "tracestream-source-topic"
_CHUNK = 2000


def source_headers(topic: str, offset: int) -> dict[str, bytes]:
    return {SOURCE_TOPIC_HEADER: topic.encode(), SOURCE_OFFSET_HEADER: str(offset).encode()}


def source_offset(headers: Iterable[tuple[str, bytes]] | dict[str, bytes], source_topic: str) -> int | None:
    """The raw offset a record was produced from, if it came from ``source_topic``."""
    found_topic = found_offset = None
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == SOURCE_TOPIC_HEADER:
            found_topic = value.decode()
        elif name == SOURCE_OFFSET_HEADER:
            found_offset = int(value)
    return found_offset if found_topic == source_topic else None


async def produced_since(
    bootstrap: str, *, source_topic: str, committed: dict[int, int], output_topics: Iterable[str]
) -> dict[int, set[int]]:
    """Per source partition p: the offsets >= ``committed[p]`` that already have output.

    Reads partition p of each output topic backwards in chunks until it
    reaches records produced before ``committed[p]``; normally one short read,
    and none for an empty partition.
    """
    done: dict[int, set[int]] = {partition: set() for partition in committed}
    outputs = [TopicPartition(topic, partition) for partition in sorted(committed) for topic in output_topics]
    if not outputs:
        return done
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
        retry_backoff_ms=20, fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        consumer.assign(outputs)
        starts = await consumer.beginning_offsets(outputs)
        ends = await consumer.end_offsets(outputs)
        for tp in outputs:
            if ends[tp] > starts[tp]:
                consumer.assign([tp])
                done[tp.partition] |= await _scan_back(
                    consumer, tp, starts[tp], ends[tp], source_topic, committed[tp.partition]
                )
        return done
    finally:
        await consumer.stop()


async def _scan_back(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, source_topic: str, committed: int
) -> set[int]:
    found: set[int] = set()
    upper = end
    while upper > start:
        lower = max(start, upper - _CHUNK)
        oldest = await _read_range(consumer, tp, lower, upper, source_topic, committed, found)
        if oldest is not None and oldest < committed:
            break
        upper = lower
    return found


async def _read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, lower: int, upper: int,
    source_topic: str, committed: int, found: set[int],
) -> int | None:
    """Collect source offsets >= committed in [lower, upper); return the smallest source offset seen."""
    consumer.seek(tp, lower)
    oldest: int | None = None
    position = lower
    while position < upper:
        batches = await consumer.getmany(tp, timeout_ms=1000)
        records = batches.get(tp, [])
        if not records:
            position = await consumer.position(tp)  # transaction markers or compaction gaps
            continue
        for record in records:
            if record.offset >= upper:
                break
            offset = source_offset(record.headers or (), source_topic)
            if offset is not None:
                oldest = offset if oldest is None else min(oldest, offset)
                if offset >= committed:
                    found.add(offset)
        position = records[-1].offset + 1
    return oldest
