"""The producer SDK against a real broker: delivery, keys and partitions, order, failures."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime, timezone
from uuid import uuid4

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.breakage import Breakage
from devtools.generator import generate_events
from devtools.output import write_jsonl
from ingest.jsonl import publish_jsonl
from ingest.producer import DeliveryFailed, EventMetadata, TraceProducer
from schemas.codec import AvroCodec
from schemas.registry import default_registry

pytestmark = pytest.mark.integration

PARTITIONS = 3
BIG_TOPIC_CONFIG = {"max.message.bytes": str(4 * 1024 * 1024)}
READ_LIMITS = {"fetch_max_bytes": 8 * 1024 * 1024, "max_partition_fetch_bytes": 8 * 1024 * 1024}


def _settings() -> Settings:
    return Settings(topic_prefix=f"t{uuid4().hex[:8]}.")


async def _create_raw_topic(kafka: KafkaClients, settings: Settings, config: dict[str, str]) -> None:
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(settings.topics.raw, PARTITIONS, 1, topic_configs=config)]
        )
    finally:
        await admin.close()


async def _read_all(kafka: KafkaClients, topic: str, expected: int, timeout_s: float = 30) -> list:
    consumer = kafka.consumer(
        enable_auto_commit=False, auto_offset_reset="earliest",
        **READ_LIMITS,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out = []
        async with asyncio.timeout(timeout_s):
            while len(out) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    out.extend(records)
        return out
    finally:
        await consumer.stop()


async def _publish(producer: TraceProducer, events) -> None:
    for e in events:
        if e.payload is not None:
            await producer.publish_bytes(e.payload, e.trace_id.encode())
        else:
            await producer.publish(e.record, schema_version=e.schema_version)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_every_event_arrives_keyed_partitioned_and_in_order(kafka):
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    events = list(generate_events(1500, seed=21, broken_share=0.3))
    events += [e for e in generate_events(4000, seed=4, broken_share=1.0)
               if e.expected_reason == Breakage.EVENT_TOO_LARGE][:1]
    assert events[-1].expected_reason == Breakage.EVENT_TOO_LARGE
    codec = AvroCodec(default_registry())

    async with TraceProducer(settings, kafka, codec=codec, max_in_flight=500) as producer:
        await _publish(producer, events)
        report = await producer.flush()
    assert report.failed == 0, report.errors[:3]
    assert report.delivered == len(events)

    records = await _read_all(kafka, settings.topics.raw, len(events))
    assert len(records) == len(events)
    # Keys are trace ids on the partition any Kafka client picks (murmur2), in publish order.
    partitioner = DefaultPartitioner()
    sent_order: dict[int, list[bytes]] = defaultdict(list)
    for e in events:
        key = e.trace_id.encode()
        sent_order[partitioner(key, list(range(PARTITIONS)), list(range(PARTITIONS)))].append(key)
    got_order: dict[int, list[bytes]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        got_order[r.partition].append(r.key)
    assert got_order == sent_order
    # Values are exactly the bytes meant: the Avro encoding, or the raw payload.
    by_key = {r.key: r.value for r in records}
    for e in events:
        value = by_key[e.trace_id.encode()]
        if e.payload is not None:
            assert value == e.payload
        else:
            assert value == codec.encode(e.record, "Trace", e.schema_version)
    assert len(by_key[events[-1].trace_id.encode()]) > 1024 * 1024


def _big_event():
    return next(e for e in generate_events(4000, seed=4, broken_share=1.0)
                if e.expected_reason == Breakage.EVENT_TOO_LARGE)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_event_the_topic_cannot_take_is_reported_and_never_sent(kafka):
    settings = _settings()
    # A topic limited to Kafka's stock 1 MiB cannot take the 1.15 MB event.
    await _create_raw_topic(kafka, settings, {"max.message.bytes": "1048588"})
    big = _big_event()
    small = list(generate_events(50, seed=8, broken_share=0.0))

    producer = TraceProducer(settings, kafka)
    await producer.start()
    try:
        await _publish(producer, small[:25])
        await producer.publish(big.record, schema_version=big.schema_version)
        await _publish(producer, small[25:])
        report = await producer.flush()
    finally:
        await producer.stop()
    assert report.failed == 1
    assert report.errors[0].key == big.trace_id.encode()
    assert isinstance(report.errors[0].error, MessageSizeTooLargeError)
    assert "max.message.bytes" in str(report.errors[0].error)
    assert report.delivered == len(small)
    with pytest.raises(DeliveryFailed) as raised:
        report.raise_for_failures()
    assert big.trace_id in str(raised.value)
    records = await _read_all(kafka, settings.topics.raw, len(small))
    assert sorted(r.key for r in records) == sorted(e.trace_id.encode() for e in small)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_after_a_broker_refusal_failures_are_reported_and_the_producer_recovers(
    kafka,
):
    """A refused batch leaves a sequence gap; the producer restarts its client to go on."""
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    big = _big_event()
    small = list(generate_events(90, seed=8, broken_share=0.0))
    async with TraceProducer(settings, kafka) as producer:
        await _publish(producer, small[:30])
        first = await producer.flush()  # the producer now believes the topic takes 4 MiB
        assert (first.delivered, first.failed) == (30, 0)
        await _set_max_message_bytes(kafka, settings.topics.raw, 1024 * 1024)
        await producer.publish(big.record, schema_version=big.schema_version)
        await _publish(producer, small[30:60])
        second = await producer.flush()
        failed_keys = {f.key for f in second.errors}
        assert big.trace_id.encode() in failed_keys
        assert second.delivered + second.failed == 31
        await _publish(producer, small[60:])
        third = await producer.flush()
        assert (third.delivered, third.failed) == (30, 0)
    records = await _read_all(kafka, settings.topics.raw, 30 + second.delivered + 30)
    assert len(records) == 60 + second.delivered
    assert big.trace_id.encode() not in {r.key for r in records}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_each_events_future_says_where_the_broker_put_it_without_a_flush(kafka):
    """Concurrent publishers share batches; each event's future names its own partition and offset."""
    settings = _settings()
    await _create_raw_topic(kafka, settings, {"max.message.bytes": "1048588"})
    events = list(generate_events(900, seed=31, broken_share=0.0))
    big = _big_event()
    codec = AvroCodec(default_registry())

    async with TraceProducer(settings, kafka, codec=codec, linger_ms=5) as producer:
        async def publish_share(share):
            return [(e, await producer.publish(e.record, schema_version=e.schema_version)) for e in share]

        shares = await asyncio.gather(*(publish_share(events[k::3]) for k in range(3)))
        refused = await producer.publish(big.record, schema_version=big.schema_version)
        async with asyncio.timeout(20):  # settled by the acknowledgements, not by a flush
            placed = {e.trace_id.encode(): await delivery for share in shares for e, delivery in share}
        with pytest.raises(MessageSizeTooLargeError, match="max.message.bytes"):
            await refused
        report = await producer.flush()
    assert (report.delivered, report.failed) == (len(events), 1)
    assert report.errors[0].key == big.trace_id.encode()

    assert all(isinstance(m, EventMetadata) and m.topic == settings.topics.raw for m in placed.values())
    assert len({(m.partition, m.offset) for m in placed.values()}) == len(events)
    records = await _read_all(kafka, settings.topics.raw, len(events))
    at = {(r.partition, r.offset): r for r in records}
    for e in events:
        record = at[placed[e.trace_id.encode()][1:]]
        assert record.key == e.trace_id.encode()
        assert record.value == codec.encode(e.record, "Trace", e.schema_version)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_publishers_racing_for_one_partitions_full_batches_lose_no_event(kafka):
    """Batches that fill while another publisher waits in the hand-over: every acknowledged event is in the log.

    Small batches and one key make every few events a hand-over, and the hand-over of a partition
    waits while its previous batch is in flight, so publishers keep finding the next batch full.
    """
    settings = _settings()
    await _create_raw_topic(kafka, settings, {})
    payloads = [f"{n:05d}".encode() * 200 for n in range(1200)]  # 1 KB each, all different
    async with TraceProducer(settings, kafka, linger_ms=50, max_batch_size=4096) as producer:
        async def publish_share(share):
            return [(payload, await producer.publish_bytes(payload, b"one-key")) for payload in share]

        shares = await asyncio.gather(*(publish_share(payloads[k::40]) for k in range(40)))
        async with asyncio.timeout(30):
            placed = {payload: await delivery for share in shares for payload, delivery in share}
        report = await producer.flush()
    assert (report.delivered, report.failed) == (len(payloads), 0)
    records = await _read_all(kafka, settings.topics.raw, len(payloads))
    assert sorted(r.value for r in records) == sorted(payloads)
    at = {(r.partition, r.offset): r.value for r in records}
    assert {payload: at.get(m[1:]) for payload, m in placed.items()} == {p: p for p in payloads}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_batch_the_broker_refuses_fails_its_events_futures_and_the_new_limit_is_learnt(kafka):
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    big = _big_event()
    small = list(generate_events(60, seed=9, broken_share=0.0))
    async with TraceProducer(settings, kafka) as producer:
        await _publish(producer, small[:20])
        assert (await producer.flush()).delivered == 20  # it now believes the topic takes 4 MiB
        await _set_max_message_bytes(kafka, settings.topics.raw, 1024 * 1024)
        refused = await producer.publish(big.record, schema_version=big.schema_version)
        with pytest.raises(MessageSizeTooLargeError):
            async with asyncio.timeout(20):
                await refused
        report = await producer.flush()
        assert (report.delivered, report.failed) == (0, 1)
        # The client restarts and reads the topic again: the next big event is refused before it is sent.
        after = [await producer.publish(e.record, schema_version=e.schema_version) for e in small[20:40]]
        again = await producer.publish(big.record, schema_version=big.schema_version)
        after += [await producer.publish(e.record, schema_version=e.schema_version) for e in small[40:]]
        with pytest.raises(MessageSizeTooLargeError, match="max.message.bytes"):
            await again
        placed = [await delivery for delivery in after]
        assert (await producer.flush()).failed == 1
    records = await _read_all(kafka, settings.topics.raw, 60)
    at = {(r.partition, r.offset): r.key for r in records}
    assert [at[(m.partition, m.offset)] for m in placed] == [e.trace_id.encode() for e in small[20:]]


async def _set_max_message_bytes(kafka: KafkaClients, topic: str, value: int) -> None:
    admin = kafka.admin()
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(value)})
        await admin.alter_configs([resource])
        async with asyncio.timeout(10):
            while True:
                [resp] = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
                )
                entries = resp.resources[0][4]
                if entries and entries[0][1] == str(value):
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_leaving_the_context_raises_for_unreported_failures(kafka):
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    event = next(e for e in generate_events(10, seed=1, broken_share=0.0))
    with pytest.raises(DeliveryFailed):
        async with TraceProducer(settings, kafka, max_request_size=1024) as producer:
            # Bigger than max_request_size: counted as failed at once, never sent.
            await producer.publish(event.record, schema_version=event.schema_version)
    async with TraceProducer(settings, kafka) as producer:
        await producer.publish(event.record, schema_version=event.schema_version)
        assert producer.in_flight == 1
    # Left cleanly: stop() flushed it.
    assert producer.in_flight == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_linger_sends_a_lone_event_without_flush(kafka):
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    event = next(e for e in generate_events(10, seed=2, broken_share=0.0))
    async with TraceProducer(settings, kafka, linger_ms=5) as producer:
        await producer.publish(event.record, schema_version=event.schema_version)
        records = await _read_all(kafka, settings.topics.raw, 1, timeout_s=15)
        assert [r.key for r in records] == [event.trace_id.encode()]
        report = await producer.flush()
    assert (report.delivered, report.failed) == (1, 0)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_lingered_batches_wait_for_their_brokers_last_acknowledgement_and_go_out_together(kafka):
    """One round trip at a time per broker: what arrives meanwhile goes out in the next, not in a queue of batches.

    Events arrive one per turn of the event loop with no linger, as single-trace requests do under load.
    """
    settings = _settings()
    await _create_raw_topic(kafka, settings, {})
    payloads = [f"{n:05d}".encode() * 40 for n in range(600)]
    async with TraceProducer(settings, kafka, linger_ms=0) as producer:
        client = producer._producer  # the one Kafka client; spied on, as a reader of the log cannot see batches
        send_batch = client.send_batch
        handed: list[tuple[int, int, int]] = []  # (partition, events, batches of that partition unacknowledged)
        futures: dict[int, list[asyncio.Future]] = defaultdict(list)

        async def spy(batch, topic, *, partition):
            handed.append((partition, batch.record_count(), sum(not f.done() for f in futures[partition])))
            future = await send_batch(batch, topic, partition=partition)
            futures[partition].append(future)
            return future

        client.send_batch = spy
        deliveries = []
        for n, payload in enumerate(payloads):
            deliveries.append(await producer.publish_bytes(payload, f"key-{n}".encode()))
            await asyncio.sleep(0)
        async with asyncio.timeout(30):
            placed = [await delivery for delivery in deliveries]
        report = await producer.flush()
    assert (report.delivered, report.failed) == (len(payloads), 0)
    assert [unacknowledged for _, _, unacknowledged in handed] == [0] * len(handed)
    assert sum(events for _, events, _ in handed) == len(payloads)
    assert len(handed) < len(payloads) / 4, f"{len(handed)} batches for {len(payloads)} events"
    records = await _read_all(kafka, settings.topics.raw, len(payloads))
    at = {(r.partition, r.offset): r.value for r in records}
    assert [at[m.partition, m.offset] for m in placed] == payloads


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_publish_jsonl_publishes_good_lines_and_reports_bad_ones(kafka, tmp_path):
    settings = _settings()
    await _create_raw_topic(kafka, settings, BIG_TOPIC_CONFIG)
    path = tmp_path / "traces.jsonl"
    events = list(generate_events(400, seed=13, broken_share=0.3))
    with path.open("w", encoding="utf-8") as fp:
        written = write_jsonl(events, fp)
        fp.write("\n")  # a blank line: skipped
        fp.write('{"prompt": "unterminated\n')
    progress: list[int] = []
    async with TraceProducer(settings, kafka) as producer:
        summary = await publish_jsonl(
            path, producer, now=lambda: datetime.now(timezone.utc), on_progress=progress.append
        )
    rejects = sum(written.publish_rejects.values()) + 1
    assert summary.lines == len(events) + 2
    assert len(summary.rejected) == rejects
    assert summary.rejected[-1].line_no == len(events) + 2
    assert summary.rejected[-1].message.startswith(f"line {len(events) + 2} is not valid JSON")
    assert summary.published == len(events) - rejects + 1
    assert (summary.delivered, summary.failed) == (summary.published, 0)
    assert progress and progress[-1] == summary.lines
    records = await _read_all(kafka, settings.topics.raw, summary.published)
    assert len(records) == summary.published
    codec = AvroCodec(default_registry())
    decoded = {codec.decode(r.value)[0]["trace_id"] for r in records}
    expected = {json.loads(line)["trace_id"] for line in path.read_text().splitlines()
                if line.strip() and _is_trace_json(line)}
    assert decoded == expected


def _is_trace_json(line: str) -> bool:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    return "steps" in obj
