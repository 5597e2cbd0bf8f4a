"""Datasets as offset ranges on a real broker and the real ClickHouse engine.

The processors run in this test process (which owns the session's chDB
folder); snapshots, replays and exports go through the same functions the
`tracestream dataset` commands call.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from aiokafka.admin import RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dataset.catalog import load_catalog
from dataset.errors import DatasetExists, SnapshotTimeout, UnknownDataset
from dataset.export import export_dataset
from dataset.filter import parse_filter
from dataset.formats import FORMATS
from dataset.manifest import DatasetRef
from dataset.ranges import OffsetRange, parse_offsets_json
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.errors import RangeBeyondEndError, RangeExpiredError
from kafkalog.groups import validate_group
from kafkalog.lag import end_offsets
from kafkalog.ranges import read_ranges
from schemas.codec import AvroCodec
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up, wait_until_committed
from streams.rebuild import drop_and_recreate_tables, rewind_materializer
from tests.integration.support import kafka_of, publish, running_processors
from warehouse.client import Warehouse
from warehouse.errors import WarehouseUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]

CODEC = AvroCodec(default_registry())


async def snapshot(settings: Settings, request: DatasetRequest, **options):
    return await create_dataset(settings, kafka_of(settings), request, CODEC, **options)


async def export_bytes(manifest, fmt: str, source: str, processors, split: str = "all") -> bytes:
    sink = io.BytesIO()
    summary = await export_dataset(manifest, fmt, split, sink, source=source, kafka=processors.runners[0].kafka,
                                   codec=CODEC, warehouse=processors.writer.run)
    assert summary.content_sha256 == manifest.content_sha256
    return sink.getvalue()


async def catalog_events(settings: Settings) -> int:
    ends = await end_offsets(kafka_of(settings), [settings.topics.datasets])
    return sum(ends.values())


async def test_snapshot_while_publishing_names_exact_ranges(settings: Settings):
    stop = asyncio.Event()
    after_snapshot: set[str] = set()
    snapshot_returned = False

    async def keep_publishing() -> int:
        batch = 0
        while not stop.is_set():
            events = list(generate_events(50, seed=1000 + batch, broken_share=0.0))
            await publish(settings, events)
            if snapshot_returned:
                after_snapshot.update(e.trace_id for e in events)
            batch += 1
        return batch * 50

    async with running_processors(settings):
        publisher = asyncio.create_task(keep_publishing())
        await asyncio.sleep(1.0)
        manifest = await snapshot(settings, DatasetRequest("live"))
        snapshot_returned = True
        await asyncio.sleep(1.0)
        stop.set()
        published = await publisher
        await wait_until_caught_up(settings, kafka_of(settings))

    size = sum(r.end - r.start for r in manifest.ranges)
    records = [r async for r in read_ranges(kafka_of(settings), manifest.ranges, codec=CODEC)]
    # Transaction markers take offsets too (validate commits in transactions), so a range holds fewer records.
    assert manifest.record_count == len(records) > 0 and len(records) <= size
    assert [(r["partition"], r["offset"]) for r in records] == sorted((r["partition"], r["offset"]) for r in records)
    ends_now = await end_offsets(kafka_of(settings), [settings.topics.valid])
    whole = [OffsetRange(tp.topic, tp.partition, 0, end) for tp, end in ends_now.items()]
    assert len([r async for r in read_ranges(kafka_of(settings), whole, codec=CODEC)]) == published > len(records)
    assert after_snapshot and not after_snapshot & {r["trace_id"] for r in records}


async def test_replay_and_warehouse_give_identical_exports_and_survive_a_rebuild(settings: Settings):
    events = list(generate_events(600, seed=41, broken_share=0.0))
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        manifest = await snapshot(settings, DatasetRequest("exports", split=Split(eval_share=0.2)))
        assert manifest.record_count == len(events) and manifest.eval_count > 0
        exported = {}
        for fmt in FORMATS:
            replayed = await export_bytes(manifest, fmt, "kafka", processors)
            assert replayed == await export_bytes(manifest, fmt, "warehouse", processors)
            assert replayed == await export_bytes(manifest, fmt, "kafka", processors), "a second export differs"
            exported[fmt] = replayed
            lines = [json.loads(line) for line in replayed.splitlines()]
            assert len(lines) == len(events)
            assert all("i" in step and "type" in step for line in lines for step in line["steps"])
        train = await export_bytes(manifest, "trace", "kafka", processors, split="train")
        assert len(train.splitlines()) == manifest.train_count
        await processors.writer.run(drop_and_recreate_tables)

    await rewind_materializer(settings, kafka_of(settings))
    async with running_processors(settings) as processors:
        await wait_until_caught_up(settings, kafka_of(settings))
        for fmt in FORMATS:
            assert await export_bytes(manifest, fmt, "warehouse", processors) == exported[fmt]
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT name, version, event_type FROM `{w.database}`.datasets FINAL ORDER BY offset"))
        assert rows == [("exports", 1, "created"), ("exports", 1, "ready")]


async def test_filters_and_split_match_an_independent_reference(settings: Settings):
    events = list(generate_events(800, seed=51, broken_share=0.0))
    records = {e.trace_id: e.record for e in events}
    expressions = ["source=gsm-synth,tutor-bot", "steps>=6", "meta.difficulty=hard"]
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        request = DatasetRequest("filtered", filter=parse_filter(expressions), split=Split(eval_share=0.3, salt="s1"))
        manifest = await snapshot(settings, request)
        lines = [json.loads(line) for line in (await export_bytes(manifest, "trace", "warehouse", processors)).splitlines()]

    expected = {
        tid for tid, r in records.items()
        if r["source"] in ("gsm-synth", "tutor-bot") and len(r["steps"]) >= 6 and r["meta"].get("difficulty") == "hard"
    }
    assert 0 < len(expected) < len(records)
    assert {line["trace_id"] for line in lines} == expected
    assert manifest.record_count == len(expected)
    split = Split(eval_share=0.3, salt="s1")
    assert Counter(line["split"] for line in lines) == Counter(split.assign(tid) for tid in expected)
    assert manifest.eval_count == sum(split.assign(tid) == "eval" for tid in expected)


async def test_ready_is_never_published_before_the_materializer_caught_up(settings: Settings):
    stalled = True

    class StalledWarehouse(Warehouse):
        def insert(self, table, columns):
            if stalled:
                raise WarehouseUnavailable("injected: the warehouse is down, the materializer waits")
            super().insert(table, columns)

    def open_warehouse() -> Warehouse:
        real = Warehouse.connect(settings)
        return StalledWarehouse(real.client, real.database, embedded=real.embedded)

    events = list(generate_events(200, seed=61, broken_share=0.0))
    async with running_processors(settings, open_warehouse) as processors:
        await publish(settings, events)
        raw_ends = await end_offsets(kafka_of(settings), [settings.topics.raw])
        await wait_until_committed(kafka_of(settings), validate_group(settings), raw_ends)
        with pytest.raises(SnapshotTimeout, match="has not committed"):
            await snapshot(settings, DatasetRequest("stalled"), wait_timeout_s=3)
        catalog = await load_catalog(kafka_of(settings), settings.topics.datasets, CODEC)
        assert [(e.manifest.name, e.status) for e in catalog] == [("stalled", "failed")]
        with pytest.raises(UnknownDataset):
            catalog.get("stalled")

        stalled = False
        manifest = await snapshot(settings, DatasetRequest("stalled"))
        assert processors.writer.outage_retries > 0
    assert manifest.version == 2 and manifest.record_count == len(events)


async def test_bad_requests_are_refused_and_publish_nothing(settings: Settings):
    await publish(settings, list(generate_events(300, seed=71, broken_share=0.0)))
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))
        await snapshot(settings, DatasetRequest("base", version=1))
        published = await catalog_events(settings)

        with pytest.raises(DatasetExists, match="base@1 already exists"):
            await snapshot(settings, DatasetRequest("base", version=1))
        with pytest.raises(UnknownDataset, match="no ready dataset nope"):
            await snapshot(settings, DatasetRequest("child", since=DatasetRef("nope", 0)))
        with pytest.raises(TracestreamError):
            parse_offsets_json('{"0": [10, 5]}', settings.topics.valid)
        with pytest.raises(TracestreamError):
            parse_offsets_json("{not json", settings.topics.valid)
        ends = await end_offsets(kafka_of(settings), [settings.topics.valid])
        tp = next(iter(ends))
        too_far = parse_offsets_json(json.dumps({str(tp.partition): [0, ends[tp] + 5]}), settings.topics.valid)
        with pytest.raises(RangeBeyondEndError, match="high watermark"):
            await snapshot(settings, DatasetRequest("far", from_offsets=too_far))

        admin = kafka_of(settings).admin()
        await admin.start()
        try:
            await admin.delete_records({tp: RecordsToDelete(before_offset=2)})
        finally:
            await admin.close()
        expired = parse_offsets_json(json.dumps({str(tp.partition): [0, ends[tp]]}), settings.topics.valid)
        with pytest.raises(RangeExpiredError, match=r"\[0, 2\)"):
            await snapshot(settings, DatasetRequest("expired", from_offsets=expired))
        assert await catalog_events(settings) == published


async def test_incremental_dataset_starts_where_its_parent_ended(settings: Settings):
    async with running_processors(settings):
        await publish(settings, list(generate_events(200, seed=81, broken_share=0.0)))
        await wait_until_caught_up(settings, kafka_of(settings))
        base = await snapshot(settings, DatasetRequest("inc"))
        await publish(settings, list(generate_events(150, seed=82, broken_share=0.0)))
        await wait_until_caught_up(settings, kafka_of(settings))
        more = await snapshot(settings, DatasetRequest("inc-delta", since=DatasetRef("inc", 0)))
    assert more.parent == DatasetRef("inc", base.version)
    assert [r.start for r in more.ranges] == [r.end for r in base.ranges]
    assert (base.record_count, more.record_count) == (200, 150)


async def test_a_topic_whose_retention_would_expire_the_ranges_is_warned_about(settings: Settings):
    await publish(settings, list(generate_events(50, seed=91, broken_share=0.0)))
    admin = kafka_of(settings).admin()
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topics.valid,
                                                  {"retention.ms": str(7 * 86_400_000)})])
    finally:
        await admin.close()
    warnings: list[str] = []
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))
        manifest = await snapshot(settings, DatasetRequest("short-lived"), warn=warnings.append)
    assert manifest.record_count == 50
    assert len(warnings) == 1 and "retention.ms=604800000" in warnings[0] and "retention.ms=-1" in warnings[0]


async def test_parquet_export_holds_every_record_and_step_of_the_jsonl_export(settings: Settings):
    events = list(generate_events(700, seed=43, broken_share=0.0))
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        manifest = await snapshot(settings, DatasetRequest("columns", split=Split(eval_share=0.2)))
        parquet = await export_bytes(manifest, "parquet", "kafka", processors)
        assert parquet == await export_bytes(manifest, "parquet", "kafka", processors), "a second export differs"
        assert parquet == await export_bytes(manifest, "parquet", "warehouse", processors)
        jsonl = [json.loads(line) for line in (await export_bytes(manifest, "trace", "kafka", processors)).splitlines()]
        eval_only = await export_bytes(manifest, "parquet", "kafka", processors, split="eval")

    table = pq.read_table(io.BytesIO(parquet))
    rows = table.to_pylist()
    assert len(rows) == len(jsonl) == len(events)
    for row, line in zip(rows, jsonl, strict=True):
        assert row["id"] == line["id"] and row["split"] == line["split"]
        assert row["steps"] == line["steps"]  # every step: index, type, content, in order
        assert dict(row["meta"]) == line["meta"]
        assert row["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == line["created_at"]
        for key in ("trace_id", "trace_version", "prompt", "final_answer", "source", "score", "model",
                    "topic", "partition", "offset"):
            assert row[key] == line[key], key
    assert pq.read_table(io.BytesIO(eval_only)).num_rows == manifest.eval_count
