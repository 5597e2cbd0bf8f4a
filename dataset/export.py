"""Export a dataset as JSON Lines or Parquet, from Kafka (replay) or from the warehouse.

Both sources give the same records in (partition, offset) order, the same
selection and split, so the bytes are the same. From Kafka each record is
decoded and serialized once (``dataset.hashing.canonical``): those bytes are
hashed to check the manifest's ``content_sha256``, and the JSON Lines line is
cut from them (``dataset.formats.line_writer``) or the Parquet columns filled
from the same values (``dataset.parquet.ParquetColumns``). From the warehouse
the engine selects the records and writes those bytes and lines itself, and
Parquet columns come back as Arrow arrays (``dataset.warehouse_columns``).

From Kafka, decoding and formatting can run in worker processes
(``workers=N``, ``dataset.worker_pool``): each worker turns a raw batch into
bytes (the canonical lines to hash, the JSON Lines, or an Arrow IPC batch of
Parquet rows), and this process hashes and writes them in order, regrouping
Parquet rows into the same whole row groups, so the file is byte for byte the
one-process file.

The records themselves come as dicts (``dataset_records``) or as Arrow tables
(``dataset_tables``; from Kafka with workers, ``dataset.kafka_tables``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from dataset import worker_pool
from dataset.formats import FORMATS, line_writer
from dataset.hashing import Canonical, CanonicalLines, LineCollector
from dataset.kafka_tables import kafka_tables
from dataset.manifest import Manifest
from dataset.parquet import (
    DICTIONARY_COLUMNS,
    PARQUET,
    ROW_GROUP_ROWS,
    STATISTICS_COLUMNS,
    ParquetColumns,
)
from dataset.parquet import SCHEMA as PARQUET_SCHEMA
from dataset.reader import DatasetRead
from dataset.record_table import records_table
from dataset.warehouse_columns import ColumnPage, ColumnPages
from dataset.warehouse_reader import (
    read_range_pages_from_warehouse,
    read_range_tables_from_warehouse,
)
from deploy.kafka_clients import KafkaClients
from kafkalog.log import paused_gc
from kafkalog.ranges import decode_batch, read_range_batches, read_range_batches_raw
from schemas.codec import AvroCodec
from schemas.errors import DecodeError, InvalidDatasetRequest
from schemas.registry import default_registry
from warehouse.client import Warehouse
from warehouse.executor import WarehouseThread

Source = Literal["kafka", "warehouse"]
EXPORT_FORMATS = (*FORMATS, PARQUET)
_PAGE = 10_000
_PAGES_AHEAD = 2
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
    return WarehouseThread(lambda: warehouse).run


async def dataset_batches(
    manifest: Manifest, *, source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None, workers: int = 0,
) -> AsyncIterator[list[dict]]:
    """The manifest's records, unfiltered, in (partition, offset) order, a batch (list) at a time.

    With ``workers``, Kafka batches are decoded in that many processes and sent back pickled
    (rebuilding a record from pickle costs about a third of decoding it).
    """
    if source == "kafka" and workers > 0:
        async for batch in _pooled(manifest, kafka, codec, workers, _decode):
            yield batch
        return
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


async def dataset_tables(
    manifest: Manifest, *, source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None, workers: int = 0,
) -> AsyncIterator[pa.Table]:
    """The manifest's records, unfiltered, in (partition, offset) order, as tables of ``RECORD_SCHEMA``.

    From Kafka with ``workers``, those processes read and decode the log (``dataset.kafka_tables``);
    without, batches are decoded here record by record.
    """
    if source == "kafka" and workers > 0:
        async for table in kafka_tables(kafka, manifest.ranges, codec=codec, workers=workers):
            yield table
        return
    if source == "kafka":
        async for batch in read_range_batches(kafka, manifest.ranges, codec=codec):
            yield records_table(batch)
        return
    pages: Iterator[pa.Table] | None = None

    def next_page(w: Warehouse) -> pa.Table | None:
        nonlocal pages
        pages = pages or read_range_tables_from_warehouse(w, manifest.ranges, batch_rows=_PAGE)
        return next(pages, None)

    while (page := await warehouse(next_page)) is not None:
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
    warehouse: WarehouseRunner | None = None, workers: int = 0,
) -> ExportSummary:
    """Write the manifest's records that pass its filter (and ``split``) as ``fmt``: JSON Lines, or Parquet.

    Args:
        workers: from Kafka, decode and format in this many processes (0: in this one). The bytes are
            the same either way; the processes pay off only on a machine with cores to spare.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidDatasetRequest(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    read, sink = DatasetRead(manifest), _CountingSink(out)
    parquet = _ParquetRows(sink) if fmt == PARQUET else None
    records = 0
    try:
        if workers > 0 and source == "kafka":
            async for chunk in _pooled(manifest, kafka, codec, workers, _work, fmt, split):
                read.hasher.add_lines(chunk.hashed)
                if parquet is not None:
                    if chunk.written:
                        parquet.add_batch(pa.ipc.open_stream(chunk.out).read_next_batch())
                    parquet.flush()
                else:
                    sink.write(chunk.out)
                records += chunk.written
        elif source == "warehouse":
            records = await _export_columns(manifest, fmt, split, read, sink, parquet, warehouse)
        else:
            formatter = _Formatter(fmt, split, read)
            add_row = parquet.add if parquet is not None else None
            async for batch in dataset_batches(manifest, source=source, kafka=kafka, codec=codec, warehouse=warehouse):
                lines, written = formatter.run(batch, add_row)
                records += written
                if parquet is not None:
                    parquet.flush()
                for start in range(0, len(lines), _LINES_PER_WRITE):
                    sink.write(b"".join(lines[start:start + _LINES_PER_WRITE]))
    finally:
        if parquet is not None:
            parquet.close()
    return ExportSummary(records, sink.position, sink.sha256.hexdigest(), read.content_sha256)


async def _export_columns(
    manifest: Manifest, fmt: str, split: str, read: DatasetRead, sink: _CountingSink, parquet: _ParquetRows | None,
    warehouse: WarehouseRunner | None,
) -> int:
    """From the warehouse as columns, the next page read while this one is hashed and written; records written."""
    if warehouse is None:
        raise InvalidDatasetRequest("an export from the warehouse needs a warehouse")
    pages, formatter = ColumnPages(manifest, fmt), _Formatter(fmt, split, read)
    written = 0
    # Two pages asked for ahead, so the warehouse thread (one call at a time, in order) never waits on this one.
    ahead = deque(asyncio.ensure_future(warehouse(pages.next)) for _ in range(_PAGES_AHEAD))
    try:
        while (page := await ahead.popleft()) is not None:
            ahead.append(asyncio.ensure_future(warehouse(pages.next)))
            if page.records is not None:  # steps out of order: the per-record path puts them in order
                columns = ParquetColumns() if parquet is not None else None
                lines, n = formatter.run(page.records, columns.add if columns is not None else None)
                out: Any = columns.batch() if columns is not None else b"".join(lines)
            else:
                hashed, splits, out, n = await asyncio.to_thread(_finish, page, split, parquet is not None)
                read.hasher.add_lines(hashed)
                for name, count in splits.items():
                    read.counts[name] += count
            if parquet is not None:
                parquet.add_batch(out)
                parquet.flush()
            else:
                sink.write(out)
            written += n
    finally:
        for reading in ahead:
            if not reading.cancel() and not reading.cancelled():
                reading.exception()  # read ahead and not wanted: its error, if any, is the one already raised
    return written


def _finish(page: ColumnPage, split: str, parquet: bool) -> tuple[CanonicalLines, dict[str, int], Any, int]:
    """A page's hashed bytes, split counts, and its rows in ``split`` (a Parquet batch, or JSON Lines)."""
    if parquet:
        batch = page.parquet_batch(split)
        return page.hashed(), page.splits(), batch, batch.num_rows
    lines, n = page.lines(split)
    return page.hashed(), page.splits(), lines, n


class _Formatter:
    """One batch of dataset records: selected and hashed by the dataset reader (serialized once), then cut
    into lines or columns."""

    def __init__(self, fmt: str, split: str, read: DatasetRead) -> None:
        self.read = read
        self.split = split
        self.line = None if fmt == PARQUET else line_writer(fmt)

    def run(self, batch: list[dict], add_row: Callable[[Canonical, str], None] | None) -> tuple[list[bytes], int]:
        """The lines (none for Parquet: rows go to ``add_row``) and how many records were written."""
        split, line = self.split, self.line
        lines: list[bytes] = []
        written = 0
        with paused_gc():  # builds acyclic values only; writing (which may block) is the caller's
            for record_split, c, _ in self.read.select(batch):
                if split != "all" and record_split != split:
                    continue
                if add_row is not None:
                    add_row(c, record_split)
                else:
                    lines.append(line(record_split, c))
                written += 1
        return lines, written


class _ParquetRows:
    """Rows into a Parquet file, one row group per ``ROW_GROUP_ROWS`` rows (a fixed layout: same input, same bytes)."""

    def __init__(self, sink: _CountingSink) -> None:
        self.columns = ParquetColumns()
        self.ready: list[pa.RecordBatch] = []
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), PARQUET_SCHEMA, compression="zstd",
                                       use_dictionary=DICTIONARY_COLUMNS, write_statistics=STATISTICS_COLUMNS)

    def add(self, c: Canonical, split: str) -> None:
        self.columns.add(c, split)
        if self.columns.rows >= ROW_GROUP_ROWS:
            self.ready.append(self.columns.batch())

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Rows built elsewhere (a worker), regrouped into whole row groups of one contiguous batch each.

        A row group written from a chunked table differs in bytes from one written from a single
        batch of the same rows; ``combine_chunks`` makes them the same.
        """
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        while self.pending_rows >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(self.pending, schema=PARQUET_SCHEMA)
            self.ready.extend(table.slice(0, ROW_GROUP_ROWS).combine_chunks().to_batches())
            rest = table.slice(ROW_GROUP_ROWS)
            self.pending, self.pending_rows = rest.to_batches(), rest.num_rows

    def flush(self) -> None:
        """Write the row groups that are full."""
        for batch in self.ready:
            self.writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
        self.ready = []

    def close(self) -> None:
        if self.columns.rows:
            self.ready.append(self.columns.batch())
        if self.pending_rows:
            self.ready.extend(pa.Table.from_batches(self.pending, schema=PARQUET_SCHEMA).combine_chunks().to_batches())
            self.pending, self.pending_rows = [], 0
        self.flush()
        self.writer.close()


# --- decoding and formatting in worker processes -----------------------------------------------


class _Message(NamedTuple):
    """The parts of a ``ConsumerRecord`` that decoding reads, sent to a worker."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class _Job:
    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]
    fmt: str
    split: str
    manifest: Manifest


@dataclass(frozen=True)
class _Chunk:
    """A worker's result for one batch: bytes only, cheap to send back."""

    hashed: CanonicalLines
    out: bytes
    """JSON Lines, or an Arrow IPC stream of the Parquet rows."""
    written: int


def _work(job: _Job) -> _Chunk | None:
    """Decode, select, serialize and format one batch; None when a record does not decode.

    The reader then decodes the batch itself, so the error it raises is the one an
    in-process export raises, coordinates and all.
    """
    messages = [_Message(job.topic, job.partition, o, v) for o, v in zip(job.offsets, job.values)]
    try:
        records = decode_batch(messages, worker_pool.worker_codec())
    except DecodeError:
        return None
    collector = LineCollector()
    columns = ParquetColumns() if job.fmt == PARQUET else None
    lines, written = _Formatter(job.fmt, job.split, DatasetRead(job.manifest, collector)).run(
        records, columns.add if columns is not None else None)
    if columns is None:
        return _Chunk(collector.lines(), b"".join(lines), written)
    if not written:
        return _Chunk(collector.lines(), b"", 0)
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, PARQUET_SCHEMA) as writer:
        writer.write_batch(columns.batch())
    return _Chunk(collector.lines(), stream.getvalue().to_pybytes(), written)


def _decode(job: _Job) -> list[dict] | None:
    """Decode one batch into dataset records (sent back pickled); None when a record does not decode."""
    messages = [_Message(job.topic, job.partition, o, v) for o, v in zip(job.offsets, job.values)]
    try:
        return decode_batch(messages, worker_pool.worker_codec())
    except DecodeError:
        return None


async def _pooled(
    manifest: Manifest, kafka: KafkaClients, codec: AvroCodec | None, workers: int,
    work: Callable[[_Job], Any], fmt: str = "", split: str = "all",
) -> AsyncIterator[Any]:
    """``work(job)`` of each raw batch, in order; up to ``workers + 1`` batches in the pool while the next is read."""
    if codec is None:
        codec = AvroCodec(default_registry())
    pool, loop = worker_pool.pool(codec, workers), asyncio.get_running_loop()
    pending: deque = deque()

    async def finished() -> Any:
        future, raw = pending.popleft()
        result = await future
        if result is None:
            decode_batch(raw, codec)  # raises the DecodeError, naming topic[partition]@offset
            raise RuntimeError("a worker could not decode a batch that decodes here")
        return result

    try:
        async for raw in read_range_batches_raw(kafka, manifest.ranges):
            job = _Job(raw[0].topic, raw[0].partition, [m.offset for m in raw], [m.value for m in raw],
                       fmt, split, manifest)
            pending.append((loop.run_in_executor(pool, work, job), raw))
            if len(pending) > workers:
                yield await finished()
        while pending:
            yield await finished()
    finally:
        for future, _ in pending:
            future.cancel()
