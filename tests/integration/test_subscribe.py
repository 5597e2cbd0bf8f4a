"""The consumer SDK on the real broker: groups split partitions, failures are re-delivered, seeks are exact."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone

import pytest

from consumers.records import Record, Undecodable
from consumers.subscribe import subscribe
from dataset.catalog import load_catalog
from dataset.hashing import ContentHasher
from dataset.manifest import Manifest
from dataset.ranges import OffsetRange
from dataset.select import select
from dataset.snapshot import DatasetRequest, create_dataset
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.errors import (
    RangeBeyondEndError,
    SubscriptionError,
    UndecodableRecordError,
    UnknownTopicError,
)
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics
from tests.integration.support import kafka_of, publish, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(180)]

CODEC = AvroCodec(default_registry())


def valid_events(count: int, seed: int):
    return list(generate_events(count, seed=seed, broken_share=0.0))


async def wait_split(*subscriptions, partitions: int, timeout_s: float = 60) -> None:
    """Until the members' assignments are disjoint and cover every partition."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        shares = [s.assignment() for s in subscriptions]
        if all(shares) and sum(map(len, shares)) == partitions and set().union(*shares) == set(range(partitions)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"group did not settle: {[s.assignment() for s in subscriptions]}")


async def test_two_members_of_a_group_split_the_partitions_and_see_every_event_once(settings: Settings):
    events = valid_events(300, seed=11)
    await ensure_pipeline_topics(settings, kafka_of(settings))
    async with subscribe(settings, "traces.raw", group="team-a", idle_timeout_s=3) as a, \
            subscribe(settings, "traces.raw", group="team-a", idle_timeout_s=3) as b:
        await wait_split(a, b, partitions=settings.partitions)
        shares = {"a": a.assignment(), "b": b.assignment()}
        await publish(settings, events)

        async def drain(subscription) -> list[Record]:
            return [record async for record in subscription]

        seen_a, seen_b = await asyncio.gather(drain(a), drain(b))

    assert {r.partition for r in seen_a} <= shares["a"] and {r.partition for r in seen_b} <= shares["b"]
    assert seen_a and seen_b
    ids = [r.key for r in seen_a + seen_b]
    assert sorted(ids) == sorted(e.trace_id for e in events)  # every event, none twice
    assert [r.value["trace_id"] for r in seen_a + seen_b] == ids
    # Both schema versions the generator writes arrive, each resolved to the latest shape.
    assert {r.schema_version for r in seen_a + seen_b} == {1, 2}
    assert {e.schema_version for e in events} == {1, 2}
    assert all("model" in r.value for r in seen_a + seen_b)


async def test_a_member_joining_mid_stream_takes_over_partitions_without_loss_or_duplicates(settings: Settings):
    events = valid_events(400, seed=19)
    await publish(settings, events)
    seen_a: list[Record] = []
    seen_b: list[Record] = []

    async def slow_drain(subscription, into: list[Record]) -> None:
        async for record in subscription:
            into.append(record)
            await asyncio.sleep(0.025)  # a body that takes time (10 s in all), so the rebalance lands mid-stream

    async with subscribe(settings, "traces.raw", group="team-f", idle_timeout_s=4) as a:
        first = asyncio.create_task(slow_drain(a, seen_a))
        await wait_for_count(seen_a, 60)
        async with subscribe(settings, "traces.raw", group="team-f", idle_timeout_s=4) as b:
            await asyncio.gather(first, slow_drain(b, seen_b))

    assert sorted(r.key for r in seen_a + seen_b) == sorted(e.trace_id for e in events)
    assert seen_b, "the second member never got a partition"



async def wait_for_count(items: list, count: int, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(items) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(items)} of {count} arrived"
        await asyncio.sleep(0.01)


async def test_a_failed_body_is_delivered_again_after_restart_and_nothing_before_it(settings: Settings):
    events = valid_events(120, seed=12)
    await publish(settings, events)
    handled: list[Record] = []
    failing: Record | None = None
    with pytest.raises(RuntimeError, match="downstream is down"):
        async with subscribe(settings, "traces.raw", group="team-b") as records:
            async for record in records:
                if len(handled) == 50:
                    failing = record
                    raise RuntimeError("downstream is down")
                handled.append(record)

    async with subscribe(settings, "traces.raw", group="team-b", idle_timeout_s=3) as records:
        again = [record async for record in records]

    assert failing is not None
    first_of_partition = next(r for r in again if r.partition == failing.partition)
    assert first_of_partition.coordinates == failing.coordinates
    assert {r.coordinates for r in handled}.isdisjoint(r.coordinates for r in again)
    assert sorted(r.key for r in handled + again) == sorted(e.trace_id for e in events)


async def test_leaving_a_bare_loop_early_does_not_commit_the_record_in_hand(settings: Settings):
    await publish(settings, valid_events(30, seed=13))
    async for record in subscribe(settings, "traces.raw", group="team-c"):
        first = record
        break
    await asyncio.sleep(0.5)  # the abandoned iterator is closed by the event loop
    async with subscribe(settings, "traces.raw", group="team-c", idle_timeout_s=3) as records:
        again = [r.coordinates async for r in records]
    assert first.coordinates in again
    assert len(again) == 30


async def test_a_time_seek_starts_at_the_first_record_at_or_after_it(settings: Settings):
    before, after = valid_events(40, seed=14), valid_events(25, seed=15)
    await publish(settings, before)
    await asyncio.sleep(0.1)
    since = datetime.now(timezone.utc)
    await asyncio.sleep(0.1)
    await publish(settings, after)

    async with subscribe(settings, "traces.raw", since=since, idle_timeout_s=2) as records:
        got = [record async for record in records]
    assert sorted(r.key for r in got) == sorted(e.trace_id for e in after)
    assert all(r.timestamp >= since for r in got)


async def test_a_group_reset_to_a_time_reprocesses_from_there_and_is_refused_while_members_run(settings: Settings):
    before, after = valid_events(30, seed=27), valid_events(20, seed=28)
    await publish(settings, before)
    await asyncio.sleep(0.1)
    since = datetime.now(timezone.utc)
    await asyncio.sleep(0.1)
    await publish(settings, after)
    async with subscribe(settings, "traces.raw", group="team-g", idle_timeout_s=2) as records:
        assert len([r async for r in records]) == 50  # the group is at the end now

    async with subscribe(settings, "traces.raw", group="team-g", since=since, idle_timeout_s=2) as records:
        again = [r async for r in records]
    assert sorted(r.key for r in again) == sorted(e.trace_id for e in after)

    async with subscribe(settings, "traces.raw", group="team-g") as running:
        await wait_split(running, partitions=settings.partitions)
        with pytest.raises(SubscriptionError, match="cannot move group 'team-g'.*active members; stop them first"):
            async with subscribe(settings, "traces.raw", group="team-g", since=since):
                pass


async def test_a_dataset_seek_yields_exactly_the_manifest_records(settings: Settings):
    events = list(generate_events(400, seed=16, broken_share=0.05))
    async with running_processors(settings):
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        topic = settings.topics.valid
        # A middle slice of every partition, so records exist before and after each range.
        ranges = tuple(OffsetRange(topic, p, 5, 60) for p in range(settings.partitions))
        await create_dataset(settings, kafka_of(settings),
                             DatasetRequest(name="slice", from_offsets=ranges), CODEC)
        await publish(settings, valid_events(30, seed=17))  # more log after the snapshot
        manifest = (await load_catalog(kafka_of(settings), settings.topics.datasets, CODEC)).get("slice").manifest

        async with subscribe(settings, "traces.valid", dataset=manifest) as records:
            got = [record async for record in records]

    assert [(r.partition, r.offset) for r in got] == [(r.partition, o) for r in ranges for o in range(r.start, r.end)]
    hasher = ContentHasher()
    for record in got:
        dataset_record = {**record.value, "topic": record.topic, "partition": record.partition, "offset": record.offset}
        for _, selected in select((dataset_record,), manifest.filter, manifest.split, "all"):
            hasher.add(selected)
    assert hasher.hexdigest() == manifest.content_sha256
    assert len(got) == manifest.record_count


async def test_undecodable_records_raise_with_coordinates_or_come_as_items(settings: Settings):
    await ensure_pipeline_topics(settings, kafka_of(settings))
    producer = kafka_of(settings).producer(acks="all")
    await producer.start()
    try:
        good = CODEC.encode(valid_events(1, seed=18)[0].record, "Trace")
        for value in (good, b"not avro at all", good):
            await producer.send_and_wait(settings.topics.raw, value, key=b"k", partition=1)
    finally:
        await producer.stop()

    with pytest.raises(UndecodableRecordError, match=rf"{settings.topics.raw}\[1\]@1 cannot be decoded \(not_avro\)"):
        async with subscribe(settings, "traces.raw", group="team-d") as records:
            async for _ in records:
                pass
    # The bad record was not committed: the group stops at it again.
    with pytest.raises(UndecodableRecordError) as caught:
        async with subscribe(settings, "traces.raw", group="team-d") as records:
            async for _ in records:
                pass
    assert caught.value.offset == 1 and caught.value.original == b"not avro at all"

    async with subscribe(settings, "traces.raw", on_undecodable="yield", idle_timeout_s=2) as records:
        items = [item async for item in records]
    assert [type(i) for i in items] == [Record, Undecodable, Record]
    assert (items[1].reason, items[1].original, items[1].offset) == ("not_avro", b"not avro at all", 1)


async def test_an_unknown_topic_is_named(settings: Settings):
    with pytest.raises(UnknownTopicError, match=rf"topic {settings.topic_prefix}traces\.nope does not exist"):
        async with subscribe(settings, f"{settings.topic_prefix}traces.nope", group="team-e"):
            pass


async def test_a_dataset_range_past_the_end_is_refused_before_anything_is_yielded(settings: Settings):
    await publish(settings, valid_events(10, seed=20))
    topic = settings.topics.raw
    manifest = Manifest(name="future", version=1, topic=topic, ranges=(OffsetRange(topic, 0, 0, 10_000),),
                        created_at=datetime.now(timezone.utc))
    with pytest.raises(RangeBeyondEndError, match=rf"{re.escape(topic)}\[0\] ends at 10000, past the high watermark"):
        async with subscribe(settings, "traces.raw", dataset=manifest):
            pass
