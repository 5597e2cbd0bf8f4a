"""The one range reader (kafkalog.log): exact [start, end), gaps from transactions, located decode errors."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from deploy.kafka_clients import KafkaClients
from kafkalog.errors import RangeReadStalled
from kafkalog.log import read_range, read_to_end, start_range_consumer
from schemas.errors import CorruptAvroError, DecodeError

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(120)]


def decode(record) -> int:
    if not record.value.startswith(b"n="):
        raise CorruptAvroError("not a number record")
    return int(record.value[2:])


async def make_topic(kafka: KafkaClients) -> str:
    topic = f"range-{uuid.uuid4().hex[:8]}"
    admin = await kafka.start(kafka.admin())
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def test_ranges_skip_transaction_gaps_and_name_undecodable_records(kafka_bootstrap: str):
    kafka = KafkaClients(kafka_bootstrap)
    topic = await make_topic(kafka)
    producer = await kafka.start(kafka.producer(transactional_id=f"range-{topic}", enable_idempotence=True))
    try:
        # partition 0: n=0..4 in a committed transaction, an aborted one, then n=5..6 committed, then a bad record
        async with producer.transaction():
            for n in range(5):
                await producer.send_and_wait(topic, f"n={n}".encode(), partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"n=999", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            for n in (5, 6):
                await producer.send_and_wait(topic, f"n={n}".encode(), partition=0)
        async with producer.transaction():
            await producer.send_and_wait(topic, b"garbage", partition=0)
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    consumer = await start_range_consumer(kafka)
    try:
        end = (await consumer.end_offsets([tp]))[tp]
        records = [r async for r in read_range(consumer, tp, 0, end)]
        offsets = [r.offset for r in records]
        assert [r.value for r in records] == [b"n=0", b"n=1", b"n=2", b"n=3", b"n=4", b"n=5", b"n=6", b"garbage"]
        assert offsets[-1] < end - 1 and len(set(offsets)) == 8  # markers and the aborted record left gaps

        bad = offsets[-1]
        # A range that ends on a gap (the aborted record and its marker) ends there, with no record past it.
        gap_end = offsets[5]  # the first offset after the aborted transaction's marker
        assert [v async for v in read_range(consumer, tp, 0, gap_end, decode=decode)] == [0, 1, 2, 3, 4]
        assert [v async for v in read_range(consumer, tp, offsets[2], offsets[4], decode=decode)] == [2, 3]
        assert [v async for v in read_range(consumer, tp, 3, 3)] == []

        with pytest.raises(DecodeError) as caught:
            [v async for v in read_range(consumer, tp, 0, end, decode=decode)]
        assert str(caught.value).startswith(f"{topic}[0]@{bad}: ")
        assert (caught.value.topic, caught.value.partition, caught.value.offset) == (topic, 0, bad)
        assert caught.value.reason == "corrupt_avro"

        # Past the end of the log: nothing arrives, and the reader says where it is stuck.
        with pytest.raises(RangeReadStalled, match=rf"{topic}\[0\]"):
            [r async for r in read_range(consumer, tp, end, end + 1, stall_timeout_s=0.5)]
    finally:
        await consumer.stop()

    everything = await read_to_end(kafka, topic)
    assert [r.value for r in everything][:2] == [b"n=0", b"n=1"] and len(everything) == 8
    with pytest.raises(DecodeError, match=rf"^{topic}\[0\]@{bad}: "):
        await read_to_end(kafka, topic, decode)
