"""Export a dataset as JSON Lines or Parquet, from Kafka (replay) or from the warehouse.

Both sources yield the same records in (partition, offset) order and go
through the same filter, split and formatter, so the bytes are the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from consumers.ranges import read_ranges
from consumers.warehouse_reader import read_ranges_from_warehouse
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from schemas.dataset import ContentHasher, Manifest, select
from schemas.errors import InvalidDatasetRequest
from schemas.exports import FORMATS, export_line
from schemas.parquet_export import PARQUET, ROW_GROUP_ROWS, parquet_row, record_batch
from schemas.parquet_export import SCHEMA as PARQUET_SCHEMA
from warehouse.client import Warehouse

Source = Literal["kafka", "warehouse"]
EXPORT_FORMATS = (*FORMATS, PARQUET)
_PAGE = 5000


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, and the dataset hash recomputed from what it read."""

    records: int
    bytes_written: int
    file_sha256: str
    content_sha256: str
    """Hash of every record of the manifest (all splits), to compare with the manifest's."""


WarehouseRunner = Callable[[Callable[[Warehouse], Any]], Awaitable[Any]]
"""Runs a function of the warehouse on the thread that owns it (e.g. ``BatchWriter.run``)."""


def own_thread(warehouse: Warehouse) -> WarehouseRunner:
    """A runner for a process with no worker: one dedicated thread for the warehouse."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse")
    return lambda fn: asyncio.get_running_loop().run_in_executor(executor, fn, warehouse)


async def dataset_records(
    manifest: Manifest, *, source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None,
) -> AsyncIterator[dict]:
    """The manifest's records, unfiltered, in (partition, offset) order, from the chosen source."""
    if source == "kafka":
        async for record in read_ranges(kafka, manifest.ranges, codec=codec):
            yield record
        return
    rows: Iterator[dict] | None = None

    def next_page(w: Warehouse) -> list[dict]:
        nonlocal rows
        rows = rows or read_ranges_from_warehouse(w, manifest.ranges)
        return list(itertools.islice(rows, _PAGE))

    while page := await warehouse(next_page):
        for record in page:
            yield record


class _CountingSink:
    """A write-only file over ``out`` that counts and hashes what passes (pyarrow needs ``tell``)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.sha256, self.position, self.closed = out, hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.out.write(data)
        self.sha256.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        self.closed = True  # the caller owns ``out``


async def export_dataset(
    manifest: Manifest, fmt: str, split: Literal["all", "train", "eval"], out: BinaryIO, *,
    source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None,
) -> ExportSummary:
    """Write the manifest's records that pass its filter (and ``split``) as ``fmt``: JSON Lines, or Parquet."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidDatasetRequest(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    hasher, sink = ContentHasher(), _CountingSink(out)
    parquet = _ParquetRows(sink) if fmt == PARQUET else None
    records = 0
    try:
        async for record in dataset_records(manifest, source=source, kafka=kafka, codec=codec, warehouse=warehouse):
            for record_split, selected in select((record,), manifest.filter, manifest.split, "all"):
                hasher.add(selected)
                if split != "all" and record_split != split:
                    continue
                if parquet is not None:
                    parquet.add(parquet_row(selected, record_split))
                else:
                    sink.write(export_line(fmt, record_split, selected))
                records += 1
    finally:
        if parquet is not None:
            parquet.close()
    return ExportSummary(records, sink.position, sink.sha256.hexdigest(), hasher.hexdigest())


class _ParquetRows:
    """Rows into a Parquet file, one row group per ``ROW_GROUP_ROWS`` rows (a fixed layout: same input, same bytes)."""

    def __init__(self, sink: _CountingSink) -> None:
        self.rows: list[dict] = []
        self.writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), PARQUET_SCHEMA, compression="zstd")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP_ROWS:
            self._write()

    def _write(self) -> None:
        if self.rows:
            self.writer.write_batch(record_batch(self.rows), row_group_size=ROW_GROUP_ROWS)
            self.rows = []

    def close(self) -> None:
        self._write()
        self.writer.close()
