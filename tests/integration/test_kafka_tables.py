"""Decoded replay into columns in worker processes (``dataset.kafka_tables``) against the record readers.

The workers read the real broker and decode with ClickHouse's Avro reader
(chDB, in each worker); what they give must be, row for row, the dataset
records the in-process replay decodes with fastavro and the warehouse holds.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime

import pyarrow as pa
import pytest

import dataset.kafka_tables as kafka_tables_module
from dataset import worker_pool
from dataset.export import dataset_records, dataset_tables
from dataset.kafka_tables import kafka_tables
from dataset.ranges import OffsetRange
from dataset.record_table import RECORD_SCHEMA, records_table
from dataset.snapshot import DatasetRequest, create_dataset
from deploy.kafka_admin import ensure_topics_async
from devtools.generator import generate_events
from kafkalog.ranges import read_ranges
from schemas.codec import AvroCodec
from schemas.errors import CorruptAvroError, NotAvroError
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.support import kafka_of, publish, running_processors
from tests.integration.test_dataset_columns import _hostile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CODEC = AvroCodec(default_registry())


def _rows(table: pa.Table) -> list[dict]:
    """Rows as dicts, ``meta`` a dict (the warehouse's map need not keep the producer's key order)."""
    return [{**row, "meta": dict(row["meta"])} for row in table.to_pylist()]


async def _concat(tables) -> pa.Table:
    return pa.concat_tables([table async for table in tables], promote_options="none")


@pytest.mark.asyncio
async def test_columns_decoded_in_workers_are_the_records_of_replay_and_of_the_warehouse(settings, monkeypatch):
    monkeypatch.setattr(kafka_tables_module, "STRETCH_OFFSETS", 37)  # many stretches, over both workers
    events = _hostile(list(generate_events(500, seed=91, broken_share=0.0)))
    assert {e.schema_version for e in events} == {1, 2}  # both writer schemas, so both decode paths' files
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        manifest = await create_dataset(settings, kafka_of(settings), DatasetRequest("columns"), CODEC)
        kafka, warehouse = kafka_of(settings), processors.writer.run
        from_workers = await _concat(dataset_tables(manifest, source="kafka", kafka=kafka, codec=CODEC, workers=2))
        from_warehouse = await _concat(dataset_tables(manifest, source="warehouse", warehouse=warehouse))
        records = [r async for r in dataset_records(manifest, source="kafka", kafka=kafka, codec=CODEC)]

    assert from_workers.schema == RECORD_SCHEMA == from_warehouse.schema
    assert from_workers.num_rows == len(records) == manifest.record_count == len(events)
    assert from_workers.equals(records_table(records))  # byte for byte the fastavro records, meta order and all
    assert _rows(from_warehouse) == _rows(from_workers)
    assert [(r["partition"], r["offset"]) for r in records] == sorted((r["partition"], r["offset"]) for r in records)
    assert any(r["model"] is None for r in records) and any(r["model"] is not None for r in records)
    assert any("\u2028" in r["prompt"] for r in records) and any(r["meta"] == {} for r in records)


@pytest.mark.asyncio
async def test_a_record_that_does_not_decode_is_named_by_its_offset(settings, monkeypatch):
    """A topic of its own, written around validation: corrupt bodies, and instants the warehouse cannot hold."""
    monkeypatch.setattr(kafka_tables_module, "STRETCH_OFFSETS", 10)
    topic = f"{settings.topic_prefix}columns-corrupt"
    await ensure_topics_async(kafka_of(settings), {topic: 1})
    events = list(generate_events(30, seed=92, broken_share=0.0))
    for event, year in zip(events, (1, 1800, 2300, 9999)):
        event.record["created_at"] = datetime(year, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    values = [CODEC.encode(e.record, "Trace", e.schema_version) for e in events]
    values[13] = values[13][:-4]  # truncated body
    values[22] = b"plain text, not Avro"
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()

    kafka = kafka_of(settings)
    whole = await _concat(kafka_tables(kafka, [OffsetRange(topic, 0, 0, 13)], codec=CODEC, workers=1))
    assert whole.column("trace_id").to_pylist() == [e.trace_id for e in events[:13]]
    assert whole.equals(records_table([r async for r in read_ranges(kafka, [OffsetRange(topic, 0, 0, 13)], codec=CODEC)]))
    assert whole.column("created_at")[0].as_py().year == 1 and whole.column("created_at")[3].as_py().year == 9999
    with pytest.raises(CorruptAvroError, match=rf"{topic}\[0\]@13"):
        await _concat(kafka_tables(kafka, [OffsetRange(topic, 0, 0, 20)], codec=CODEC, workers=1))
    with pytest.raises(NotAvroError, match=rf"{topic}\[0\]@22"):
        await _concat(kafka_tables(kafka, [OffsetRange(topic, 0, 14, 30)], codec=CODEC, workers=1))
    # The readers in workers are still there for the next read, and stop nothing else.
    tail = await _concat(kafka_tables(kafka, [OffsetRange(topic, 0, 23, 30)], codec=CODEC, workers=1))
    assert tail.column("offset").to_pylist() == list(range(23, 30))


@pytest.mark.asyncio
async def test_a_worker_killed_mid_read_fails_that_read_and_the_next_read_starts_new_workers(settings, monkeypatch):
    monkeypatch.setattr(kafka_tables_module, "STRETCH_OFFSETS", 1)  # a job per record: the kill lands mid-read
    topic = f"{settings.topic_prefix}columns-killed"
    await ensure_topics_async(kafka_of(settings), {topic: 1})
    events = list(generate_events(40, seed=93, broken_share=0.0))
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, CODEC.encode(event.record, "Trace", event.schema_version))
        await producer.flush()
    finally:
        await producer.stop()
    kafka, ranges = kafka_of(settings), [OffsetRange(topic, 0, 0, len(events))]

    tables = kafka_tables(kafka, ranges, codec=CODEC, workers=1)
    assert (await anext(tables)).column("offset").to_pylist() == [0]
    for process in list(worker_pool.pool(CODEC, 1)._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        async for _ in tables:
            pass
    again = await _concat(kafka_tables(kafka, ranges, codec=CODEC, workers=1))
    assert again.column("trace_id").to_pylist() == [e.trace_id for e in events]
