"""Export a dataset as JSON Lines or Parquet, from Kafka (replay) or from the warehouse.

Both sources yield the same records in (partition, offset) order and go
through the same filter, split and formatter, so the bytes are the same.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from consumers.log import paused_gc
from consumers.ranges import read_range_batches
from consumers.warehouse_reader import read_range_pages_from_warehouse
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from schemas.dataset import Canonical, ContentHasher, Manifest, selector
from schemas.errors import InvalidDatasetRequest
from schemas.exports import FORMATS, line_writer
from schemas.parquet_export import PARQUET, ROW_GROUP_ROWS, ParquetColumns
from schemas.parquet_export import SCHEMA as PARQUET_SCHEMA
from warehouse.client import Warehouse

Source = Literal["kafka", "warehouse"]
EXPORT_FORMATS = (*FORMATS, PARQUET)
_PAGE = 10_000
_LINES_PER_WRITE = 128  # ~250 KB a write: few calls, and chunks the HTTP stream can pass on at once


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


async def dataset_batches(
    manifest: Manifest, *, source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None,
) -> AsyncIterator[list[dict]]:
    """The manifest's records, unfiltered, in (partition, offset) order, a batch (list) at a time."""
    if source == "kafka":
        async for batch in read_range_batches(kafka, manifest.ranges, codec=codec):
            yield batch
        return
    pages: Iterator[list[dict]] | None = None

    def next_page(w: Warehouse) -> list[dict]:
        nonlocal pages
        pages = pages or read_range_pages_from_warehouse(w, manifest.ranges, batch_rows=_PAGE)
        return next(pages, [])

    while page := await warehouse(next_page):
        yield page


async def dataset_records(
    manifest: Manifest, *, source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None,
) -> AsyncIterator[dict]:
    """The manifest's records, unfiltered, in (partition, offset) order, from the chosen source."""
    async for batch in dataset_batches(manifest, source=source, kafka=kafka, codec=codec, warehouse=warehouse):
        for record in batch:
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
    which = selector(manifest.filter, manifest.split)
    parquet = _ParquetRows(sink) if fmt == PARQUET else None
    line = None if parquet is not None else line_writer(fmt)
    records = 0
    try:
        async for batch in dataset_batches(manifest, source=source, kafka=kafka, codec=codec, warehouse=warehouse):
            lines: list[bytes] = []
            with paused_gc():  # builds acyclic values only; writing (which may block) comes after
                for record in batch:
                    record_split = which(record)
                    if record_split is None:
                        continue
                    c = hasher.add(record)  # serialized once: hashed, then cut into the line or the columns
                    if split != "all" and record_split != split:
                        continue
                    if parquet is not None:
                        parquet.add(c, record_split)
                    else:
                        lines.append(line(record_split, c))
                    records += 1
            if parquet is not None:
                parquet.flush()
            for start in range(0, len(lines), _LINES_PER_WRITE):
                sink.write(b"".join(lines[start:start + _LINES_PER_WRITE]))
    finally:
        if parquet is not None:
            parquet.close()
    return ExportSummary(records, sink.position, sink.sha256.hexdigest(), hasher.hexdigest())


class _ParquetRows:
    """Rows into a Parquet file, one row group per ``ROW_GROUP_ROWS`` rows (a fixed layout: same input, same bytes)."""

    def __init__(self, sink: _CountingSink) -> None:
        self.columns = ParquetColumns()
        self.ready: list[pa.RecordBatch] = []
        self.writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), PARQUET_SCHEMA, compression="zstd")

    def add(self, c: Canonical, split: str) -> None:
        self.columns.add(c, split)
        if self.columns.rows >= ROW_GROUP_ROWS:
            self.ready.append(self.columns.batch())

    def flush(self) -> None:
        """Write the row groups that are full."""
        for batch in self.ready:
            self.writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
        self.ready = []

    def close(self) -> None:
        if self.columns.rows:
            self.ready.append(self.columns.batch())
        self.flush()
        self.writer.close()
