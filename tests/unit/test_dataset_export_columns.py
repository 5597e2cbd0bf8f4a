"""The export loop without a broker: batches in, JSON Lines and Parquet out.

``dataset.export.dataset_batches`` is replaced by batches of awkward records
(the reader is tested against Kafka and ClickHouse in
``tests/integration/test_datasets.py``); what is checked here is everything
after it: one serialization per record, the hash, the Parquet columns and the
fixed row-group layout whatever the batch sizes.
"""

import asyncio
import hashlib
import io
import json
import random
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

import dataset.export as export
from dataset.filter import TraceFilter
from dataset.formats import EXPORTERS, FORMATS, _line
from dataset.hashing import canonical, content_sha256
from dataset.manifest import Manifest
from dataset.parquet import ParquetColumns, parquet_row, record_batch
from dataset.ranges import OffsetRange
from dataset.select import select
from dataset.split import Split
from tests.unit.test_dataset_serialization import awkward_record

pytestmark = pytest.mark.unit

ROW_GROUP_ROWS = 1000  # the export's 10,000, made smaller so that a few thousand records make three groups
COUNT = 2 * ROW_GROUP_ROWS + 345


def records(count: int = COUNT) -> list[dict]:
    rnd = random.Random(5)
    out = []
    for offset in range(count):
        r = awkward_record(rnd, offset)
        r["topic"], r["partition"] = "traces.valid", offset * 2 // count
        if r["score"] is not None and r["score"] != r["score"]:
            r["score"] = 0.25  # NaN never equals itself; the comparisons below need equal values
        out.append(r)
    return out


RECORDS = records()
MANIFEST = Manifest(
    name="cols", version=1, topic="traces.valid",
    ranges=(OffsetRange("traces.valid", 0, 0, COUNT), OffsetRange("traces.valid", 1, 0, COUNT)),
    filter=TraceFilter(max_steps=3), split=Split(eval_share=0.3), created_at=datetime(2026, 11, 30, tzinfo=timezone.utc),
)


def export_with(monkeypatch, fmt: str, batch_size: int, split: str = "all") -> tuple[bytes, export.ExportSummary]:
    async def batches(manifest, **_):
        for start in range(0, len(RECORDS), batch_size):
            yield [dict(r) for r in RECORDS[start:start + batch_size]]

    monkeypatch.setattr(export, "dataset_batches", batches)
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", ROW_GROUP_ROWS)
    out = io.BytesIO()
    summary = asyncio.run(export.export_dataset(MANIFEST, fmt, split, out, source="kafka"))
    return out.getvalue(), summary


def test_every_format_hashes_the_selected_records_and_writes_the_reference_lines(monkeypatch):
    selected = list(select(RECORDS, MANIFEST.filter, MANIFEST.split))
    expected_hash = content_sha256(r for _, r in selected)
    for fmt in FORMATS:
        data, summary = export_with(monkeypatch, fmt, 777)
        assert data == b"".join(_line(EXPORTERS[fmt](r, s)) for s, r in selected)
        assert summary.content_sha256 == expected_hash
        assert summary.records == len(selected) and summary.bytes_written == len(data)
        assert summary.file_sha256 == hashlib.sha256(data).hexdigest()
        eval_only, summary = export_with(monkeypatch, fmt, 5000, split="eval")
        assert eval_only == b"".join(_line(EXPORTERS[fmt](r, s)) for s, r in selected if s == "eval")
        assert summary.content_sha256 == expected_hash  # the hash covers every split


def test_parquet_is_the_same_bytes_whatever_the_batches_and_holds_the_trace_lines(monkeypatch):
    data, summary = export_with(monkeypatch, "parquet", 5000)
    assert export_with(monkeypatch, "parquet", 7)[0] == data
    assert export_with(monkeypatch, "parquet", ROW_GROUP_ROWS)[0] == data
    selected = list(select(RECORDS, MANIFEST.filter, MANIFEST.split))
    file = pq.ParquetFile(io.BytesIO(data))
    assert [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)] == [
        min(ROW_GROUP_ROWS, len(selected) - start) for start in range(0, len(selected), ROW_GROUP_ROWS)
    ]
    rows = file.read().to_pylist()
    lines = [json.loads(_line(EXPORTERS["trace"](r, s))) for s, r in selected]
    assert len(rows) == len(lines) == summary.records
    for row, line in zip(rows, lines, strict=True):
        assert row["steps"] == line["steps"]
        assert dict(row["meta"]) == line["meta"] and [k for k, _ in row["meta"]] == sorted(line["meta"])
        assert row["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == line["created_at"]
        for key in ("id", "split", "trace_id", "trace_version", "prompt", "final_answer", "source", "score",
                    "model", "topic", "partition", "offset"):
            assert row[key] == line[key], key


def test_columns_equal_the_row_wise_definition():
    rows = [(s, r) for s, r in select(RECORDS, TraceFilter(), Split(eval_share=0.5))]
    columns = ParquetColumns()
    for s, r in rows:
        columns.add(canonical(r), s)
    assert columns.batch().equals(record_batch(parquet_row(r, s) for s, r in rows))
    assert columns.rows == 0

