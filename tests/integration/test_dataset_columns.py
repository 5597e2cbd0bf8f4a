"""Exports from the warehouse as columns (``dataset.warehouse_columns``) against Python's own bytes.

The engine writes the canonical JSON that the content hash covers; these tests
hold it to ``json.dumps`` for every code point and a spread of floats, and hold
whole exports of hostile records (control characters, U+2028, odd scores,
steps out of order, filters, splits) to the Kafka path's bytes.
"""

from __future__ import annotations

import io
import json
import math
import random
import struct
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

import dataset.warehouse_columns as columns
from dataset import warehouse_reader
from dataset.export import EXPORT_FORMATS, export_dataset, own_thread
from dataset.filter import parse_filter
from dataset.formats import export_line
from dataset.hashing import content_sha256, float_json
from dataset.manifest import Manifest
from dataset.ranges import OffsetRange
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.settings import Settings
from devtools.base import schema_version_of
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.contracts import TRACE
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.coordinates import Coordinates
from streams.materialize import InboundEvent, trace_rows
from tests.integration.support import kafka_of, publish, running_processors
from warehouse.client import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CODEC = AvroCodec(default_registry())


def test_engine_json_strings_equal_pythons_or_are_flagged(settings: Settings):
    warehouse = Warehouse.connect(settings)
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    sql = ("SELECT arrayJoin({text:Array(String)}) AS s, toJSONString(s) AS j, "
           f"match(j, '{columns._ESCAPES_UNLIKE_PYTHON}') AS flagged "
           "SETTINGS output_format_json_escape_forward_slashes = 0")
    differ, flagged = set(), set()
    for start in range(0, len(code_points), 100_000):
        table = warehouse.query_arrow(sql, {"text": [chr(cp) for cp in code_points[start:start + 100_000]]})
        for text, engine, flag in zip(*(table.column(c).to_pylist() for c in ("s", "j", "flagged")), strict=True):
            if engine != json.dumps(text, ensure_ascii=False):
                differ.add(ord(text))
            if flag:
                flagged.add(ord(text))
    assert differ, "the engine now escapes as Python does: the flag can go"
    assert differ == flagged  # every difference flagged, and nothing else (each flag costs a Python record)
    assert len(flagged) < 20


def test_engine_scores_equal_pythons_repr_or_are_flagged(settings: Settings):
    warehouse = Warehouse.connect(settings)
    rng = random.Random(7)
    scores = [0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 2.0, 1e-4, 9.999e-5, 1e-5, 1e15, 1e16, 9999999999999998.0,
              123456.789, 1 / 3, 2 / 3, 5e-324, 1.7976931348623157e308, 0.30000000000000004]
    scores += [rng.uniform(-1, 1) for _ in range(3000)] + [round(rng.uniform(0, 100), rng.randint(0, 6)) for _ in range(3000)]
    scores += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    scores += [float(rng.randint(-10**6, 10**6)) for _ in range(1000)]
    scores = [s for s in scores if math.isfinite(s)]  # validation refuses the rest
    table = warehouse.query_arrow(
        f"SELECT arrayJoin({{scores:Array(Float64)}}) AS score, {columns._SCORE_JSON} AS j, "
        f"{columns._SCORE_AS_PYTHON} AS as_python", {"scores": scores})
    compared = 0
    for score, engine, as_python in zip(*(table.column(c).to_pylist() for c in ("score", "j", "as_python")), strict=True):
        if as_python:
            assert engine.encode() == float_json(score), score
            compared += 1
    plain = sum("e" not in repr(score) for score in scores)  # what Python writes without an exponent
    assert compared == plain > 7000  # those are the engine's to write; the rest are flagged


def _hostile(events):
    """Records every door lets in, that the engine and Python might write differently."""
    odd = ["\x0b", "\x1f", "\u2028", "\u2029", "/", "\\u2028", '"', "\\", "\x00", "\x7f", "é", "😀", "\n\t\r"]
    scores = [1.0, 0.0, -0.0, 1e-5, 123456.789, 1e16, 3e-300, None, 0.1, 2.5]
    for n, event in enumerate(events):
        record = event.record
        if n % 3 == 0:
            record["prompt"] += odd[n % len(odd)] + " tail"
            record["steps"][0]["content"] += odd[(n + 1) % len(odd)]
            record["meta"] = {**record["meta"], f"k{odd[(n + 2) % len(odd)]}": f"v{odd[(n + 3) % len(odd)]}"}
        if n % 4 == 0:
            record["score"] = scores[n % len(scores)]
        if n % 13 == 0:
            record["meta"] = {}
    return events


async def _export(manifest, fmt: str, source: str, processors, split: str = "all") -> bytes:
    sink = io.BytesIO()
    summary = await export_dataset(manifest, fmt, split, sink, source=source, kafka=processors.runners[0].kafka,
                                   codec=CODEC, warehouse=processors.writer.run)
    assert summary.content_sha256 == manifest.content_sha256, (fmt, source, split)
    return sink.getvalue()


@pytest.mark.asyncio
async def test_column_exports_of_hostile_records_equal_the_kafka_exports(settings: Settings, monkeypatch):
    monkeypatch.setattr(columns, "PAGE_ROWS", 16)  # many pages: some with rows Python writes, some without
    kinds = {"columns": 0, "with python rows": 0}
    make_page = columns.ColumnPages._page

    def counted(self, *args):
        page = make_page(self, *args)
        kinds["with python rows" if page.fixed else "columns"] += 1
        return page

    monkeypatch.setattr(columns.ColumnPages, "_page", counted)
    events = _hostile(list(generate_events(400, seed=77, broken_share=0.0)))
    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        plain = await create_dataset(settings, kafka_of(settings), DatasetRequest("hostile"), CODEC)
        picky = await create_dataset(settings, kafka_of(settings), DatasetRequest(
            "hostile-picky", filter=parse_filter(["score>=0", "steps>=2"]), split=Split(eval_share=0.3, salt="sält ☃")),
            CODEC)
        narrow = await create_dataset(settings, kafka_of(settings), DatasetRequest("hostile-narrow", filter=parse_filter([
            "trace_version=1", "meta.difficulty=medium", "created_from=2025-01-01T00:01:00Z",
            "created_until=2025-01-01T00:05:00Z", "steps<=8", "score<=0.9"]), split=Split(eval_share=0.5)), CODEC)
        assert plain.record_count == len(events) and 0 < picky.record_count < len(events) and picky.eval_count > 0
        assert 0 < narrow.record_count < picky.record_count
        for manifest in (plain, picky, narrow):
            for fmt in EXPORT_FORMATS:
                for split in ("all", "eval", "train"):
                    assert await _export(manifest, fmt, "warehouse", processors, split) == \
                        await _export(manifest, fmt, "kafka", processors, split), (manifest.name, fmt, split)
        jsonl = await _export(picky, "trace", "warehouse", processors)
        parquet = await _export(picky, "parquet", "warehouse", processors, "eval")

    assert all(kinds.values()), kinds  # each way a page can go was taken
    lines = [json.loads(line) for line in jsonl.splitlines()]
    assert len(lines) == picky.record_count
    assert all(line["score"] is not None and line["score"] >= 0 and len(line["steps"]) >= 2 for line in lines)
    assert all([s["i"] for s in line["steps"]] == sorted(s["i"] for s in line["steps"]) for line in lines)
    assert any("\u2028" in line["prompt"] for line in lines)
    assert pq.read_table(io.BytesIO(parquet)).num_rows == picky.eval_count


@pytest.mark.asyncio
async def test_steps_out_of_order_export_in_order_and_pages_stay_bounded_by_size(settings: Settings, monkeypatch):
    """Validation sorts steps into traces.valid; rows of another topic may hold them in any order."""
    monkeypatch.setattr(columns, "PAGE_ROWS", 4)
    topic = f"unsorted-{random.randrange(10**9)}"
    records = [event.record for event in generate_events(10, seed=78, broken_share=0.0)]
    for record in records[::3]:
        record["steps"].reverse()
    inbound = [InboundEvent(Coordinates(topic, 0, offset), None, CODEC.encode(record, TRACE, schema_version_of(record)))
               for offset, record in enumerate(records)]
    warehouse = Warehouse.connect(settings)
    warehouse.insert("traces", trace_rows(inbound, CODEC, datetime.now(UTC)).columns)
    manifest = Manifest(name="unsorted", version=1, topic=topic, ranges=(OffsetRange(topic, 0, 0, len(records)),),
                        created_at=datetime.now(UTC))
    expected = [{"score": None, "model": None, **record, "topic": topic, "partition": 0, "offset": offset} for offset, record in enumerate(records)]
    sink = io.BytesIO()
    summary = await export_dataset(manifest, "trace", "all", sink, source="warehouse", warehouse=own_thread(warehouse))
    assert sink.getvalue() == b"".join(export_line("trace", "train", record) for record in expected)
    assert summary.content_sha256 == content_sha256(expected)
    assert all([s["i"] for s in json.loads(line)["steps"]] == sorted(s["i"] for s in json.loads(line)["steps"])
               for line in sink.getvalue().splitlines())
    sink = io.BytesIO()
    await export_dataset(manifest, "tunix_sft", "all", sink, source="warehouse", warehouse=own_thread(warehouse))
    assert sink.getvalue() == b"".join(export_line("tunix_sft", "train", record) for record in expected)

    monkeypatch.setattr(warehouse_reader, "PAGE_BYTES", 1)  # a page of one row after the first: they are bounded by size
    pages = columns.ColumnPages(manifest, "parquet")
    sizes = []
    while (page := pages.next(warehouse)) is not None:
        sizes.append(page.table.num_rows)
    assert sizes == [4, 1, 1, 1, 1, 1, 1]
    monkeypatch.setattr(warehouse_reader, "FIRST_PAGE_ROWS", 3)  # the record path's pages too
    pages = warehouse_reader.read_range_pages_from_warehouse(warehouse, manifest.ranges)
    assert [len(page) for page in pages] == [3, 1, 1, 1, 1, 1, 1, 1]
