"""validate is exactly once by Kafka transactions: members join, die, stall and come back.

Checked from the log as a downstream reader would see it (read_committed): each
raw offset has exactly one output in traces.valid or traces.dlq, found by the
lineage headers, in raw order; then the warehouse holds exactly the valid traces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.groups import validate_group
from kafkalog.lag import committed_offsets, end_offsets
from kafkalog.log import read_to_end
from streams.catchup import wait_until_caught_up, wait_until_committed
from streams.coordinates import source_offset
from streams.topics import ensure_pipeline_topics
from streams.transactions import PartitionTransactions
from tests.conftest import free_port
from tests.integration.support import (
    expected_outcome,
    publish,
    running_processors,
    start_worker,
)
from warehouse.client import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(420)]


def kafka_of(settings: Settings) -> KafkaClients:
    return KafkaClients.from_settings(settings, settings.kafka_bootstrap)


def start_validate(settings: Settings, log: Path) -> subprocess.Popen:
    return start_worker(settings, "--stages", "validate", "--no-web", "--verbose", log=log)


async def assert_each_raw_offset_once(settings: Settings) -> int:
    """Every raw offset has exactly one committed output, in raw order per partition; returns the valid count."""
    kafka, topics = kafka_of(settings), settings.topics
    raw_ends = await end_offsets(kafka, [topics.raw])
    seen: Counter[tuple[int, int]] = Counter()
    valid = 0
    for topic in (topics.valid, topics.dlq):
        by_partition: dict[int, list[int]] = {}
        for record in await read_to_end(kafka, topic):
            offset = source_offset(record.headers, topics.raw)
            assert offset is not None, f"{topic}[{record.partition}]@{record.offset} has no lineage headers"
            seen[(record.partition, offset)] += 1
            by_partition.setdefault(record.partition, []).append(offset)
            valid += topic == topics.valid
        for partition, offsets in by_partition.items():
            assert offsets == sorted(offsets), f"{topic}[{partition}] is out of raw order"
    twice = {at: n for at, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} raw offsets were validated more than once, e.g. {sorted(twice)[:5]}"
    expected = {(tp.partition, offset) for tp, end in raw_ends.items() for offset in range(end)}
    assert set(seen) == expected, f"missing: {sorted(expected - set(seen))[:5]}, extra: {sorted(set(seen) - expected)[:5]}"
    return valid


def stop_cleanly(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    """SIGTERM every live worker: each exits 0, and no log shows a crash or a traceback."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process, log in zip(processes, logs):
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Crashed" not in text, text[-3000:]


async def wait_validated(settings: Settings, timeout_s: float) -> None:
    kafka = kafka_of(settings)
    targets = await end_offsets(kafka, [settings.topics.raw])
    await asyncio.wait_for(wait_until_committed(kafka, validate_group(settings), targets), timeout_s)


async def test_validate_processes_join_and_die_mid_stream_and_each_event_is_validated_once(
    settings: Settings, tmp_path: Path
):
    settings = settings.model_copy(update={"partitions": 6})
    events = list(generate_events(30_000, seed=909, broken_share=0.05))
    valid, _ = expected_outcome(events)
    await ensure_pipeline_topics(settings, kafka_of(settings))
    logs = [tmp_path / f"validate-{i}.log" for i in range(5)]
    workers = [start_validate(settings, logs[i]) for i in range(3)]

    async def publish_in_chunks() -> None:
        for start in range(0, len(events), 1000):
            report = await publish(settings, events[start:start + 1000])
            assert report.failed == 0
            await asyncio.sleep(0.25)

    publishing = asyncio.create_task(publish_in_chunks())
    await asyncio.sleep(4)
    workers[0].kill()  # SIGKILL mid-stream, while it holds open transactions
    workers.append(start_validate(settings, logs[3]))
    await asyncio.sleep(4)
    workers[1].kill()
    workers.append(start_validate(settings, logs[4]))
    await publishing
    await wait_validated(settings, timeout_s=240)

    assert await assert_each_raw_offset_once(settings) == valid
    stop_cleanly(workers[2:], logs[2:])

    kafka = kafka_of(settings)
    async with running_processors(settings, stages=("materialize",)):
        await asyncio.wait_for(wait_until_caught_up(settings, kafka, stages=("materialize",)), 180)
    warehouse = Warehouse.connect(settings)
    db = warehouse.database
    ((rows, distinct),) = warehouse.query(f"SELECT count(), uniqExact(trace_id) FROM `{db}`.traces FINAL")
    assert rows == valid and distinct == len({e.trace_id for e in events if e.expected_reason is None})


async def test_a_stalled_validate_process_is_fenced_and_nothing_is_duplicated(settings: Settings, tmp_path: Path):
    events = list(generate_events(12_000, seed=910, broken_share=0.05))
    await publish(settings, events)
    logs = [tmp_path / "stalled.log", tmp_path / "newcomer.log"]
    stalled = start_validate(settings, logs[0])
    kafka = kafka_of(settings)
    raw_total = sum((await end_offsets(kafka, [settings.topics.raw])).values())
    for _ in range(600):  # until it is mid-stream: some committed, much left
        done = sum((await committed_offsets(kafka, validate_group(settings))).values())
        if done > 0:
            break
        await asyncio.sleep(0.05)
    assert 0 < done < raw_total, f"the first member validated {done} of {raw_total} before it was paused"
    os.kill(stalled.pid, signal.SIGSTOP)  # past the session timeout: the group moves its partitions
    newcomer = start_validate(settings, logs[1])
    await wait_validated(settings, timeout_s=120)

    more = list(generate_events(3000, seed=911, broken_share=0.05))
    publishing = asyncio.create_task(publish(settings, more))
    os.kill(stalled.pid, signal.SIGCONT)  # the zombie wakes up with its old transactions
    await publishing
    await wait_validated(settings, timeout_s=120)

    valid, _ = expected_outcome([*events, *more])
    assert await assert_each_raw_offset_once(settings) == valid
    stop_cleanly([stalled, newcomer], logs)


async def test_an_owner_fenced_by_a_newer_one_cannot_commit(settings: Settings):
    """The mechanism itself: whoever takes a partition over fences the old holder's transactions."""
    kafka = kafka_of(settings)
    await publish(settings, list(generate_events(50, seed=912, broken_share=0.0)))
    group = validate_group(settings)
    tp = TopicPartition(settings.topics.raw, 0)

    async def member() -> tuple[object, PartitionTransactions]:
        consumer = await kafka.start(kafka.consumer(group_id=group, enable_auto_commit=False,
                                                    isolation_level="read_committed"))
        consumer.assign([tp])
        return consumer, PartitionTransactions(kafka, group=group)

    (old_consumer, old), (new_consumer, new) = await member(), await member()
    try:
        await old.take_over({tp}, old_consumer)
        records = (await old_consumer.getmany(tp, timeout_ms=10_000))[tp]
        assert records
        outputs = [(settings.topics.valid, r.key, r.value, []) for r in records]

        await new.take_over({tp}, new_consumer)  # the old holder is stalled meanwhile
        assert not await old.commit(tp, records[-1].offset + 1, outputs), "a fenced holder committed"

        assert await new.commit(tp, records[-1].offset + 1, outputs)
        for _ in range(100):  # the offset becomes readable once the broker wrote the commit markers
            if await new_consumer.committed(tp) == records[-1].offset + 1:
                break
            await asyncio.sleep(0.1)
        assert await new_consumer.committed(tp) == records[-1].offset + 1
        valid = await read_to_end(kafka, settings.topics.valid)
        assert [r.value for r in valid if r.partition == 0] == [r.value for r in records]
    finally:
        await old.close()
        await new.close()
        await old_consumer.stop()
        await new_consumer.stop()


async def test_materializers_joining_and_leaving_mid_stream_never_crash_and_write_each_row_once(settings: Settings):
    """Partitions of traces.valid move between materialize members mid-batch (a ClickHouse server allows many)."""
    settings = settings.model_copy(update={"partitions": 4, "materialize_batch_size": 300})
    events = list(generate_events(8000, seed=913, broken_share=0.05))
    valid, reasons = expected_outcome(events)
    kafka = kafka_of(settings)

    def member() -> Settings:  # each worker serves /stats on a port of its own
        return settings.model_copy(update={"web_port": free_port()})

    async with running_processors(member(), stages=("validate",)):
        publishing = asyncio.create_task(publish(settings, events))
        async with running_processors(member(), stages=("materialize",)) as first:
            await asyncio.sleep(1.5)
            async with running_processors(member(), stages=("materialize",)) as second:
                await asyncio.sleep(2)  # both members share the partitions; then the first leaves mid-stream
            assert second.failure() is None
            await publishing
            await asyncio.wait_for(wait_until_caught_up(settings, kafka), 180)
            assert first.failure() is None
    warehouse = Warehouse.connect(settings)
    db = warehouse.database
    ((rows, keys),) = warehouse.query(f"SELECT count(), uniqExact(partition, offset) FROM `{db}`.traces FINAL")
    ((letters,),) = warehouse.query(f"SELECT count() FROM `{db}`.dlq FINAL")
    assert (rows, keys) == (valid, valid)
    assert letters == sum(reasons.values())
