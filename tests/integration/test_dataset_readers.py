"""The two dataset read paths: replay from Kafka and rows from the warehouse give the same records.

The processors run in this process against the session's chDB engine (a
random database per test); the error cases use a topic of their own, written
directly, so they need no processors.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timezone

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import RecordsToDelete

from dataset.ranges import OffsetRange
from dataset.warehouse_reader import count_rows, read_ranges_from_warehouse
from deploy.kafka_admin import ensure_topics_async
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.errors import RangeBeyondEndError, RangeExpiredError
from kafkalog.lag import end_offsets
from kafkalog.ranges import read_ranges
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.support import (
    expected_outcome,
    kafka_of,
    publish,
    running_processors,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CODEC = AvroCodec(default_registry())
RECORD_KEYS = {
    "topic", "partition", "offset", "trace_id", "trace_version", "prompt", "steps", "final_answer",
    "meta", "source", "created_at", "score", "model",
}


async def kafka_records(settings: Settings, ranges, **options) -> list[dict]:
    return [r async for r in read_ranges(kafka_of(settings), ranges, codec=CODEC, **options)]


def positions(records: list[dict]) -> list[tuple[int, int]]:
    return [(r["partition"], r["offset"]) for r in records]


@pytest.mark.asyncio
async def test_kafka_and_warehouse_give_the_same_records_in_order(settings: Settings):
    events = list(generate_events(1200, seed=31, broken_share=0.05))
    valid, _ = expected_outcome(events)
    topic = settings.topics.valid
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        ends = await end_offsets(kafka_of(settings), [topic])
        # validate writes in transactions: their commit markers take offsets too, so offsets are not dense.
        assert len(ends) == settings.partitions and sum(ends.values()) >= valid
        present = set(await processors.writer.run(lambda w: w.query(
            f"SELECT partition, offset FROM `{w.database}`.traces FINAL WHERE topic = {{t:String}}", {"t": topic})))
        assert len(present) == valid
        assert all(end >= 8 for end in ends.values())

        # A middle slice of every partition: records exist before start and at/after end.
        ranges = [OffsetRange(tp.topic, tp.partition, end // 4, end - end // 4)
                  for tp, end in sorted(ends.items())]
        expected = [(r.partition, offset) for r in ranges for offset in range(r.start, r.end)
                    if (r.partition, offset) in present]

        # Small batches and pages, ranges given out of order: still exact and in (partition, offset) order.
        from_kafka = await kafka_records(settings, list(reversed(ranges)), batch_records=50)
        from_warehouse = await processors.writer.run(
            lambda w: list(read_ranges_from_warehouse(w, ranges, batch_rows=64)))
        assert positions(from_kafka) == expected
        assert positions(from_warehouse) == expected
        assert from_warehouse == from_kafka
        assert await processors.writer.run(lambda w: count_rows(w, ranges)) == len(expected)
        for r in ranges:
            assert r.end < ends[TopicPartition(topic, r.partition)]
            assert any(p == r.partition and r.end <= o for p, o in present)

        for record in from_kafka + from_warehouse:
            assert set(record) == RECORD_KEYS
            assert record["topic"] == topic
            assert record["created_at"].tzinfo is timezone.utc
            assert record["created_at"].microsecond % 1000 == 0
            assert [s["i"] for s in record["steps"]] == sorted(s["i"] for s in record["steps"])
            assert all(set(s) == {"i", "type", "content"} for s in record["steps"])

        # The whole log with default batch sizes; NULL score/model come back as None from both paths.
        whole = [OffsetRange(tp.topic, tp.partition, 0, end) for tp, end in sorted(ends.items())]
        all_kafka = await kafka_records(settings, whole)
        all_warehouse = await processors.writer.run(lambda w: list(read_ranges_from_warehouse(w, whole)))
        assert len(all_kafka) == valid
        assert all_warehouse == all_kafka
        assert {r["trace_id"] for r in all_kafka} == {e.trace_id for e in events if e.expected_reason is None}
        assert any(r["model"] is None for r in all_kafka) and any(r["model"] is not None for r in all_kafka)
        assert any(r["score"] is None for r in all_kafka) and any(r["score"] is not None for r in all_kafka)

        # Empty ranges read nothing and are fine even at the high watermark.
        empty = [OffsetRange(tp.topic, tp.partition, end, end) for tp, end in ends.items()]
        assert await kafka_records(settings, empty) == []
        assert await processors.writer.run(lambda w: list(read_ranges_from_warehouse(w, empty))) == []


async def produce_traces(kafka: KafkaClients, topic: str, partition: int, count: int, seed: int) -> None:
    # Batches of at most 16 KiB (a few records), so a small fetch never gets the whole partition at once.
    producer = kafka.producer(acks="all", enable_idempotence=True,
                                max_batch_size=16384)
    await producer.start()
    try:
        for event in generate_events(count, seed=seed, broken_share=0.0):
            value = CODEC.encode(event.record, "Trace", event.schema_version)
            await producer.send(topic, value, key=event.trace_id.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def own_topic(settings: Settings, name: str, partitions: int) -> str:
    topic = f"{settings.topic_prefix}{name}"
    await ensure_topics_async(kafka_of(settings), {topic: partitions})
    return topic


@pytest.mark.asyncio
async def test_a_range_past_the_high_watermark_or_partition_count_is_refused(settings: Settings):
    topic = await own_topic(settings, "beyond", 1)
    await produce_traces(kafka_of(settings), topic, 0, 20, seed=41)

    got = []
    with pytest.raises(RangeBeyondEndError, match=re.escape(f"{topic}[0]") + r".*high watermark 20"):
        async for record in read_ranges(kafka_of(settings), [OffsetRange(topic, 0, 0, 25)], codec=CODEC):
            got.append(record)
    assert got == []
    with pytest.raises(RangeBeyondEndError, match=re.escape(f"{topic}[3] does not exist")):
        await kafka_records(settings, [OffsetRange(topic, 3, 0, 1)])

    # Up to the high watermark exactly is fine.
    records = await kafka_records(settings, [OffsetRange(topic, 0, 15, 20)])
    assert [r["offset"] for r in records] == [15, 16, 17, 18, 19]


@pytest.mark.asyncio
async def test_a_range_deleted_by_retention_is_refused_naming_the_missing_offsets(settings: Settings):
    topic = await own_topic(settings, "expiring", 2)
    await produce_traces(kafka_of(settings), topic, 0, 30, seed=51)
    await produce_traces(kafka_of(settings), topic, 1, 30, seed=52)
    admin = kafka_of(settings).admin()
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(before_offset=12)})
    finally:
        await admin.close()

    # Partition 0 is intact, but nothing is yielded: the dataset could not be read whole.
    got = []
    ranges = [OffsetRange(topic, 0, 0, 30), OffsetRange(topic, 1, 5, 20)]
    with pytest.raises(RangeExpiredError, match=re.escape(f"offsets [5, 12) of {topic}[1]") + ".*retention"):
        async for record in read_ranges(kafka_of(settings), ranges, codec=CODEC):
            got.append(record)
    assert got == []
    with pytest.raises(RangeExpiredError, match=re.escape(f"offsets [2, 9) of {topic}[1]")):
        await kafka_records(settings, [OffsetRange(topic, 1, 2, 9)])

    records = await kafka_records(settings, [OffsetRange(topic, 1, 12, 30), OffsetRange(topic, 0, 0, 3)])
    assert positions(records) == [(0, 0), (0, 1), (0, 2)] + [(1, offset) for offset in range(12, 30)]


@pytest.mark.asyncio
async def test_offset_gaps_from_transactions_end_a_range_by_position(settings: Settings):
    """Aborted records and transaction markers take offsets that no reader sees."""
    topic = await own_topic(settings, "gaps", 1)
    values = [CODEC.encode(e.record, "Trace", e.schema_version)
              for e in generate_events(15, seed=61, broken_share=0.0)]
    producer = kafka_of(settings).producer(transactional_id=f"{topic}-tx")
    await producer.start()
    try:
        # offsets 0-4 committed, 5 marker; 6-10 aborted, 11 marker; 12-16 committed, 17 marker
        for chunk, commit in ((values[0:5], True), (values[5:10], False), (values[10:15], True)):
            await producer.begin_transaction()
            for value in chunk:
                await producer.send_and_wait(topic, value, partition=0)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    # The broker writes the last commit marker just after commit_transaction returns.
    for _ in range(100):
        ends = await end_offsets(kafka_of(settings), [topic])
        if ends == {TopicPartition(topic, 0): 18}:
            break
        await asyncio.sleep(0.05)
    assert ends == {TopicPartition(topic, 0): 18}

    async def offsets(start: int, end: int) -> list[int]:
        records = await kafka_records(settings, [OffsetRange(topic, 0, start, end)], batch_records=2)
        return [r["offset"] for r in records]

    assert await offsets(0, 18) == [0, 1, 2, 3, 4, 12, 13, 14, 15, 16]
    assert await offsets(0, 12) == [0, 1, 2, 3, 4]  # ends inside the aborted transaction
    assert await offsets(6, 12) == []  # nothing committed in there, and the read still ends
    assert await offsets(3, 14) == [3, 4, 12, 13]
    assert await offsets(17, 18) == []  # just the commit marker


@pytest.mark.asyncio
async def test_a_range_deleted_while_it_is_read_is_refused_not_skipped(settings: Settings, monkeypatch):
    """Retention racing the reader: the consumer must not jump to the new log start silently."""
    import kafkalog.log as log_module

    def small_fetch_consumer(kafka: KafkaClients, **options) -> AIOKafkaConsumer:
        # The reader's own settings, but fetches of a few records, so most of the range is still to fetch.
        return kafka.consumer(
            group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="none",
            max_partition_fetch_bytes=4096, fetch_max_bytes=4096, fetch_max_wait_ms=10,
        )

    monkeypatch.setattr(log_module, "range_consumer", small_fetch_consumer)
    topic = await own_topic(settings, "racing", 1)
    await produce_traces(kafka_of(settings), topic, 0, 200, seed=71)

    got = []
    with pytest.raises(RangeExpiredError, match=r"offsets \[(\d+), 150\) of " + re.escape(f"{topic}[0]")) as caught:
        async for record in read_ranges(kafka_of(settings), [OffsetRange(topic, 0, 0, 200)],
                                        codec=CODEC, batch_records=5):
            got.append(record)
            if len(got) == 5:
                admin = kafka_of(settings).admin()
                await admin.start()
                try:
                    await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=150)})
                finally:
                    await admin.close()
    assert 5 <= len(got) < 150
    assert [r["offset"] for r in got] == list(range(len(got)))
    # The missing offsets named start where reading stopped, not at the start of the range.
    first_missing = int(re.search(r"offsets \[(\d+),", str(caught.value)).group(1))
    assert len(got) <= first_missing < 150
