"""The local broker launcher against the real broker it starts.

One broker serves the tests that only need a cluster (each uses its own
uuid-named topic); the lifecycle tests start their own on a fresh data
folder. The jar cache is the real one, shared across runs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord, RecordMetadata

from deploy import stack
from deploy.kafka_admin import ensure_topics, ensure_topics_async
from deploy.kafka_broker import LocalKafkaBroker, read_broker_state
from deploy.kafka_clients import KafkaClients
from deploy.kafka_errors import BrokerError
from deploy.kafka_jars import fetch_broker_jars
from deploy.settings import Settings

pytestmark = pytest.mark.integration


def _settings(home: Path) -> Settings:
    return Settings(home=home, kafka_bootstrap=None, kafka_heap_mb=512)


def _topic() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    home = tmp_path_factory.mktemp("shared-broker")
    with LocalKafkaBroker(_settings(home)) as running:
        yield running


async def _produce(kafka: KafkaClients, topic: str, values: list[bytes]) -> list[RecordMetadata]:
    producer = kafka.producer(enable_idempotence=True, acks="all")
    await producer.start()
    try:
        return [await producer.send_and_wait(topic, value, key=b"k") for value in values]
    finally:
        await producer.stop()


async def _read_partition(kafka: KafkaClients, topic: str, partition: int = 0) -> list[ConsumerRecord]:
    """Every record of one partition, up to its high watermark, as a read_committed reader sees it."""
    consumer = kafka.consumer(
        isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[ConsumerRecord] = []
        while len(records) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def _topic_config(kafka: KafkaClients, topic: str, key: str) -> str:
    admin = kafka.admin()
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {key: None})])
        [(_code, _message, _type, _name, entries)] = response.resources
        return {entry[0]: entry[1] for entry in entries}[key]
    finally:
        await admin.close()


async def _partition_count(kafka: KafkaClients, topic: str) -> int:
    admin = kafka.admin()
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(60)
def test_jars_are_cached_once() -> None:
    settings = Settings()
    libs = fetch_broker_jars(settings)
    assert (libs / f"kafka_2.13-{settings.kafka_version}.jar").is_file()
    assert fetch_broker_jars(settings) == libs  # second call: from the cache


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_produced_records_come_back_with_their_offsets(broker: LocalKafkaBroker) -> None:
    assert broker.bootstrap is not None
    topic = _topic()
    await ensure_topics_async(broker.clients(), {topic: 1})
    values = [f"event-{i}".encode() for i in range(5)]

    sent = await _produce(broker.clients(), topic, values)
    received = await _read_partition(broker.clients(), topic)

    assert [meta.offset for meta in sent] == [0, 1, 2, 3, 4]
    assert [(r.offset, r.value) for r in received] == list(enumerate(values))


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ensure_topics_is_idempotent_and_keeps_records_forever(broker: LocalKafkaBroker) -> None:
    assert broker.bootstrap is not None
    topic = _topic()

    await ensure_topics_async(broker.clients(), [(topic, 3)])
    await ensure_topics_async(broker.clients(), [(topic, 3)])
    ensure_topics(broker.clients(), {topic: 5})  # the sync wrapper, even inside a running loop

    assert await _partition_count(broker.clients(), topic) == 3  # an existing topic is left alone
    assert await _topic_config(broker.clients(), topic, "retention.ms") == "-1"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ensure_topics_applies_extra_config(broker: LocalKafkaBroker) -> None:
    assert broker.bootstrap is not None
    topic = _topic()
    await ensure_topics_async(broker.clients(), {topic: 1}, config={"cleanup.policy": "compact"})
    assert await _topic_config(broker.clients(), topic, "cleanup.policy") == "compact"
    assert await _topic_config(broker.clients(), topic, "retention.ms") == "-1"


@pytest.mark.timeout(180)
def test_records_survive_restarts_on_the_same_or_new_ports(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(_settings(tmp_path), data_dir=tmp_path / "kafka")
    topic = _topic()
    first = broker.start()
    ensure_topics(broker.clients(), {topic: 1})
    asyncio.run(_produce(broker.clients(), topic, [b"a", b"b"]))
    pid = broker.pid
    assert pid is not None

    broker.stop()
    assert broker.pid is None and not _pid_alive(pid)
    assert read_broker_state(broker.data_dir) is None

    again = broker.start()  # the recorded ports are free again: same address
    assert again == first
    assert [r.value for r in asyncio.run(_read_partition(broker.clients(), topic))] == [b"a", b"b"]
    broker.stop()

    taken_port = int(first.rsplit(":", 1)[1])
    with socket.create_server(("127.0.0.1", taken_port)):  # someone else took the port meanwhile
        moved = broker.start()
        try:
            assert moved != first
            asyncio.run(_produce(broker.clients(), topic, [b"c"]))
            assert [(r.offset, r.value) for r in asyncio.run(_read_partition(broker.clients(), topic))] == [
                (0, b"a"),
                (1, b"b"),
                (2, b"c"),
            ]
        finally:
            broker.stop()


@pytest.mark.timeout(120)
def test_another_process_finds_and_stops_the_broker(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    owner = LocalKafkaBroker(settings)
    bootstrap = owner.start()
    try:
        status = stack.stack_status(settings)
        assert (status.kafka_bootstrap, status.kafka_pid, status.kafka_managed) == (bootstrap, owner.pid, True)
        assert stack.kafka_bootstrap(settings) == bootstrap

        with pytest.raises(BrokerError, match="already runs"):
            LocalKafkaBroker(settings).start()

        attached = LocalKafkaBroker.attach(settings)
        assert attached is not None and attached.pid == owner.pid
        assert stack.stack_down(settings).kafka_bootstrap is None  # stops it through the state file
        # The JVM's command line vanishes while it exits, a moment before its parent can reap it.
        deadline = time.monotonic() + 10
        while owner.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert owner.pid is not None and not owner.is_running()
        assert stack.kafka_bootstrap(settings) is None
    finally:
        owner.stop()


def test_configured_cluster_wins_over_the_local_broker(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap="kafka.example:9092")
    status = stack.stack_status(settings)
    assert (status.kafka_bootstrap, status.kafka_managed, status.kafka_pid) == ("kafka.example:9092", False, None)
    assert stack.kafka_bootstrap(settings) == "kafka.example:9092"


@pytest.mark.timeout(60)
def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap=None, kafka_heap_mb=1)  # the JVM refuses a 1 MiB heap
    broker = LocalKafkaBroker(settings)
    with pytest.raises(BrokerError, match="(?s)exited with code.*heap"):
        broker.start(timeout_s=30)
    assert broker.pid is None
    assert read_broker_state(broker.data_dir) is None
