"""Exports decoded and formatted in worker processes give the bytes and hash an in-process export gives.

The raw batches stand in for ``read_range_batches_raw`` (the reader is tested
against a broker in ``tests/integration``); the workers are real processes.
"""

import asyncio
import io

import pytest
from aiokafka.structs import ConsumerRecord

import dataset.export as export
from dataset.filter import TraceFilter
from dataset.manifest import Manifest
from dataset.ranges import OffsetRange
from dataset.split import Split
from devtools.generator import generate_events
from kafkalog.ranges import decode_batch
from schemas.codec import AvroCodec
from schemas.errors import CorruptAvroError
from schemas.registry import default_registry

pytestmark = pytest.mark.unit

CODEC = AvroCodec(default_registry())
COUNT = 2345
ROW_GROUP_ROWS = 500


def raw_batches(corrupt_at: int | None = None) -> list[list[ConsumerRecord]]:
    events = list(generate_events(COUNT, 21, broken_share=0.0))
    messages = []
    for n, e in enumerate(events):
        partition, offset = n * 2 // COUNT, n if n * 2 < COUNT else n - (COUNT + 1) // 2
        value = CODEC.encode(e.record, "Trace", e.schema_version)
        if n == corrupt_at:
            value = value[:-3]
        messages.append(ConsumerRecord("traces.valid", partition, offset, 0, 0, None, value, None, 0, len(value), ()))
    batches, sizes = [], [1, 700, 13, 977]
    for partition in (0, 1):
        part = [m for m in messages if m.partition == partition]
        start = 0
        while start < len(part):
            size = sizes[len(batches) % len(sizes)]
            batches.append(part[start:start + size])
            start += size
    return batches


MANIFEST = Manifest(
    name="workers", version=1, topic="traces.valid",
    ranges=(OffsetRange("traces.valid", 0, 0, COUNT), OffsetRange("traces.valid", 1, 0, COUNT)),
    filter=TraceFilter(min_steps=3), split=Split(eval_share=0.25),
    created_at=__import__("datetime").datetime(2026, 11, 30, tzinfo=__import__("datetime").timezone.utc),
)


def run_export(monkeypatch, fmt: str, split: str, workers: int, batches) -> tuple[bytes, export.ExportSummary]:
    async def raw(kafka, ranges, **_):
        for batch in batches:
            yield batch

    async def decoded(manifest, **_):
        for batch in batches:
            yield decode_batch(batch, CODEC)

    monkeypatch.setattr(export, "read_range_batches_raw", raw)
    monkeypatch.setattr(export, "dataset_batches", decoded)
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", ROW_GROUP_ROWS)
    out = io.BytesIO()
    summary = asyncio.run(export.export_dataset(MANIFEST, fmt, split, out, source="kafka", codec=CODEC,
                                                workers=workers))
    return out.getvalue(), summary


@pytest.mark.timeout(300)
def test_workers_write_the_same_bytes_and_hash_as_one_process(monkeypatch):
    batches = raw_batches()
    for fmt in export.EXPORT_FORMATS:
        for split in ("all", "eval"):
            here = run_export(monkeypatch, fmt, split, 0, batches)
            pooled = run_export(monkeypatch, fmt, split, 2, batches)
            assert pooled[0] == here[0], (fmt, split)
            assert pooled[1] == here[1], (fmt, split)
            assert here[1].records > 0


@pytest.mark.timeout(300)
def test_a_record_that_does_not_decode_raises_what_one_process_raises(monkeypatch):
    batches = raw_batches(corrupt_at=1500)
    with pytest.raises(CorruptAvroError) as here:
        run_export(monkeypatch, "trace", "all", 0, batches)
    with pytest.raises(CorruptAvroError) as pooled:
        run_export(monkeypatch, "trace", "all", 2, batches)
    where = str(here.value).split(":")[0]  # the rest names a fastavro object by its address
    assert where.startswith("traces.valid[1]@") and str(pooled.value).split(":")[0] == where


@pytest.mark.timeout(300)
def test_batches_decoded_in_workers_are_the_records_decoded_here(monkeypatch):
    batches = raw_batches()

    async def raw(kafka, ranges, **_):
        for batch in batches:
            yield batch

    monkeypatch.setattr(export, "read_range_batches_raw", raw)

    async def collect():
        return [b async for b in export.dataset_batches(MANIFEST, source="kafka", codec=CODEC, workers=2)]

    pooled = asyncio.run(collect())
    assert pooled == [decode_batch(batch, CODEC) for batch in batches]
    assert all(r["created_at"].tzinfo is __import__("datetime").timezone.utc for b in pooled for r in b)


def test_stretches_cut_ranges_in_reading_order_and_cover_each_offset_once():
    from dataset.kafka_tables import stretches
    from deploy.kafka_clients import KafkaClients

    kafka = KafkaClients("localhost:9092")
    ranges = [OffsetRange("t", 1, 5, 25), OffsetRange("t", 0, 0, 7), OffsetRange("t", 2, 9, 9)]
    cut = stretches(kafka, ranges, size=8)
    assert [(s.partition, s.start, s.end) for s in cut] == [(0, 0, 7), (1, 5, 13), (1, 13, 21), (1, 21, 25)]
    with pytest.raises(ValueError, match="overlap"):
        stretches(kafka, [OffsetRange("t", 0, 0, 10), OffsetRange("t", 0, 5, 12)], size=8)
