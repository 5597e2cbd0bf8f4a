"""Export a dataset as JSON Lines, from Kafka (replay) or from the warehouse.

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

from consumers.ranges import read_ranges
from consumers.warehouse_reader import read_ranges_from_warehouse
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from schemas.dataset import ContentHasher, Manifest, select
from schemas.exports import export_line
from warehouse.client import Warehouse

Source = Literal["kafka", "warehouse"]
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


async def export_dataset(
    manifest: Manifest, fmt: str, split: Literal["all", "train", "eval"], out: BinaryIO, *,
    source: Source, kafka: KafkaClients | None = None, codec: AvroCodec | None = None,
    warehouse: WarehouseRunner | None = None,
) -> ExportSummary:
    """Write the manifest's records that pass its filter (and ``split``) as ``fmt`` JSON Lines."""
    hasher, file_hash = ContentHasher(), hashlib.sha256()
    records = written = 0
    async for record in dataset_records(manifest, source=source, kafka=kafka, codec=codec, warehouse=warehouse):
        for record_split, selected in select((record,), manifest.filter, manifest.split, "all"):
            hasher.add(selected)
            if split != "all" and record_split != split:
                continue
            line = export_line(fmt, record_split, selected)
            out.write(line)
            file_hash.update(line)
            records += 1
            written += len(line)
    return ExportSummary(records, written, file_hash.hexdigest(), hasher.hexdigest())


