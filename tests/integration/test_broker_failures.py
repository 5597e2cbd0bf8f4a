"""Publishing while the broker dies: a bounded, loud failure, or exactly once after a restart.

Each test starts its own broker (it kills it with SIGKILL) and runs
`tracestream publish` as a user would, with the summary on stdout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from deploy.kafka_broker import LocalKafkaBroker
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.generator import generate_events
from devtools.output import write_jsonl
from ingest.producer import TraceProducer
from streams.coordinates import source_offset
from streams.topics import ensure_pipeline_topics
from tests.conftest import free_port
from tests.integration.support import REPO, start_worker, stats_via_worker, wait_for

pytestmark = pytest.mark.integration

DELIVERY_TIMEOUT_S = 10
PARTITIONS = 3


def _settings(tmp_path: Path, bootstrap: str, **changes) -> Settings:
    run = uuid.uuid4().hex[:10]
    return Settings(
        home=tmp_path / "home",
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{run}.",
        app_id=f"test-{run}",
        clickhouse_database=f"test_{run}",
        partitions=PARTITIONS,
        materialize_batch_seconds=0.1,
        **changes,
    )


def _start_publish(settings: Settings, path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "publish", str(path)],
        env=settings.child_environment(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _summary(stdout: str, stderr: str) -> dict[str, int]:
    """The counts of publish's summary line: published, acknowledged, not acknowledged."""
    found = re.search(r"(\d+) published, (\d+) acknowledged, (\d+) not acknowledged", stdout)
    assert found, stdout + stderr
    published, acknowledged, not_acknowledged = map(int, found.groups())
    return {"published": published, "acknowledged": acknowledged, "not_acknowledged": not_acknowledged}


async def _read_topic(kafka: KafkaClients, topic: str) -> list:
    """Every committed record of ``topic``, up to its end offsets."""
    consumer = kafka.consumer(
        enable_auto_commit=False, isolation_level="read_committed",
        fetch_max_bytes=8 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list = []
        async with asyncio.timeout(60):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _kill(broker: LocalKafkaBroker) -> None:
    """SIGKILL the broker's JVM, as a crash would, and wait until it is gone."""
    assert broker.pid is not None
    os.killpg(broker.pid, signal.SIGKILL)
    wait_for(lambda: not broker.is_running(), timeout_s=30, what="the broker to die")


def _write_file(path: Path, count: int, seed: int):
    with path.open("w", encoding="utf-8") as fp:
        return write_jsonl(generate_events(count, seed=seed, broken_share=0.05, kind="arith"), fp)


@pytest.mark.timeout(150)
def test_publish_gives_up_within_the_delivery_timeout_when_the_broker_is_gone(tmp_path: Path):
    broker = LocalKafkaBroker(Settings(home=tmp_path, kafka_bootstrap=None, kafka_heap_mb=512), data_dir=tmp_path / "kafka")
    bootstrap = broker.start()
    try:
        settings = _settings(tmp_path, bootstrap, kafka_delivery_timeout_s=DELIVERY_TIMEOUT_S)
        path = tmp_path / "traces.jsonl"
        written = _write_file(path, 30_000, seed=21)
        asyncio.run(ensure_pipeline_topics(settings, KafkaClients.from_settings(settings, bootstrap)))
        raw = settings.topics.raw

        publisher = _start_publish(settings, path)
        wait_for(lambda: publisher.poll() is not None or asyncio.run(_count(KafkaClients(bootstrap), raw)) > 0,
                 timeout_s=60, every_s=0.05, what="the first events in traces.raw")
        assert publisher.poll() is None, "the publisher finished before the broker could be killed"
        _kill(broker)
        killed = time.monotonic()
        stdout, stderr = publisher.communicate(timeout=DELIVERY_TIMEOUT_S + 45)
        took = time.monotonic() - killed

        assert publisher.returncode == 1, stdout + stderr
        assert took < DELIVERY_TIMEOUT_S + 20, f"gave up {took:.0f} s after the broker died"
        counts = _summary(stdout, stderr)
        assert counts["not_acknowledged"] > 0 or "publishing stopped at line" in stderr, stdout + stderr
        if counts["not_acknowledged"]:
            assert f"{counts['not_acknowledged']} events were not acknowledged" in stderr
            assert re.search(r"lines \d+", stderr), stderr
        assert counts["acknowledged"] + counts["not_acknowledged"] == counts["published"]
        assert counts["published"] <= written.lines - sum(written.publish_rejects.values())
        assert stderr.count("aiokafka") <= 10, stderr  # a few messages, not a flood of retries

        broker.start()  # the same data: what was acknowledged must be there
        held = asyncio.run(_count(broker.clients(), raw))
        assert counts["acknowledged"] <= held <= counts["published"]
    finally:
        broker.stop()


async def _count(kafka: KafkaClients, topic: str) -> int:
    """Records in ``topic`` (the sum of its high watermarks)."""
    consumer = kafka.consumer(enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


@pytest.mark.timeout(240)
def test_broker_killed_and_restarted_mid_stream_every_acknowledged_event_arrives_once(tmp_path: Path):
    broker = LocalKafkaBroker(Settings(home=tmp_path, kafka_bootstrap=None, kafka_heap_mb=512), data_dir=tmp_path / "kafka")
    bootstrap = broker.start()
    worker = None
    try:
        settings = _settings(tmp_path, bootstrap, kafka_delivery_timeout_s=90, web_port=free_port())
        path = tmp_path / "traces.jsonl"
        written = _write_file(path, 20_000, seed=22)
        asyncio.run(ensure_pipeline_topics(settings, KafkaClients.from_settings(settings, bootstrap)))
        raw, valid, dlq = settings.topics.raw, settings.topics.valid, settings.topics.dlq
        log = tmp_path / "worker.log"
        worker = start_worker(settings, log=log)
        wait_for(lambda: stats_via_worker(settings), timeout_s=90, what="the worker to serve /stats")

        publisher = _start_publish(settings, path)
        wait_for(lambda: publisher.poll() is not None or asyncio.run(_count(KafkaClients(bootstrap), raw)) > 0,
                 timeout_s=60, every_s=0.05, what="the first events in traces.raw")
        assert publisher.poll() is None, "the publisher finished before the broker could be killed"
        _kill(broker)
        time.sleep(1)
        assert broker.start() == bootstrap  # same data, same port: clients reconnect by themselves

        stdout, stderr = publisher.communicate(timeout=120)
        assert publisher.returncode == 0, stdout + stderr
        counts = _summary(stdout, stderr)
        assert counts == {"published": written.lines - sum(written.publish_rejects.values()),
                          "acknowledged": counts["published"], "not_acknowledged": 0}
        assert asyncio.run(_count(KafkaClients(bootstrap), raw)) == counts["acknowledged"]  # no event twice in the log

        def caught_up():
            assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{log.read_text()[-3000:]}"
            stats = stats_via_worker(settings)
            return stats is not None and stats["traces"] >= written.valid and stats
        stats = wait_for(caught_up, timeout_s=120, every_s=0.5, what="the worker to store every valid trace")
        assert stats["traces"] == stats["distinct_trace_ids"] == written.valid

        raw_records = asyncio.run(_read_topic(KafkaClients(bootstrap), raw))
        outputs = asyncio.run(_read_topic(KafkaClients(bootstrap), valid)) + asyncio.run(_read_topic(KafkaClients(bootstrap), dlq))
        made_from = Counter(
            (r.partition, at) for r in outputs if (at := source_offset(r.headers, raw)) is not None
        )
        assert set(made_from) == {(r.partition, r.offset) for r in raw_records}  # each raw event has an output
        assert [key for key, n in made_from.items() if n > 1] == []
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        broker.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_the_sdk_reports_each_unacknowledged_event_and_recovers_when_the_broker_returns(tmp_path: Path):
    broker = LocalKafkaBroker(Settings(home=tmp_path, kafka_bootstrap=None, kafka_heap_mb=512), data_dir=tmp_path / "kafka")
    bootstrap = broker.start()
    try:
        settings = _settings(tmp_path, bootstrap)
        kafka = KafkaClients.from_settings(settings, bootstrap)
        await ensure_pipeline_topics(settings, kafka)
        events = [e for e in generate_events(400, seed=23, broken_share=0.0)]
        async with TraceProducer(settings, kafka, delivery_timeout_s=5) as producer:
            for event in events[:200]:
                await producer.publish(event.record, schema_version=event.schema_version)
            assert (await producer.flush()).delivered == 200

            _kill(broker)
            for i, event in enumerate(events[200:300]):
                await producer.publish_bytes(producer.encode(event.record), event.trace_id.encode(), ref=i)
            started = time.monotonic()
            lost = await producer.flush()
            assert time.monotonic() - started < 5 + 10
            assert (lost.delivered, lost.failed) == (0, 100)
            assert sorted(f.ref for f in lost.errors) == list(range(100))
            assert all(isinstance(f.error, KafkaTimeoutError) for f in lost.errors)

            assert broker.start() == bootstrap
            for event in events[300:]:  # a fresh client: the producer goes on once the broker is back
                await producer.publish(event.record, schema_version=event.schema_version)
            assert (await producer.flush()).delivered == 100
        held = await _read_topic(KafkaClients(bootstrap), settings.topics.raw)
        keys = Counter(r.key for r in held)
        assert set(keys) >= {e.trace_id.encode() for e in events[:200] + events[300:]}
        assert max(keys.values()) == 1
    finally:
        broker.stop()
