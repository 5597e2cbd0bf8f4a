"""Decoded replay in worker processes: each reads a stretch of the log itself and decodes it into columns.

Decoding in the reading process, or sending it raw batches to decode, leaves
that one process paying for the read, the hand-over and (for records) the
return trip: on two cores it stayed under a third of a bare consume. Here the
ranges are cut into stretches of at most ``STRETCH_OFFSETS`` offsets; each
job is one stretch, read by the worker's own range consumer
(``kafkalog.log.read_range_batches``, kept open between jobs) and decoded by
ClickHouse's Avro reader (``dataset.kafka_columns``). Back comes the path of
an Arrow IPC file the worker wrote, which this process maps rather than
copies (through the pool's pipe, ~25 MB of results took ~0.1 s a stretch). Tables come out in
(partition, offset) order, ``2 × workers`` stretches in flight.

A stretch the column decoder cannot take is decoded in the worker record by
record; one that does not decode at all is read again here, so the
``DecodeError`` raised is an in-process replay's, naming ``topic[partition]@offset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing.util
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition

from dataset import worker_pool
from dataset.ranges import OffsetRange
from dataset.record_table import records_table
from deploy.kafka_clients import KafkaClients
from kafkalog.log import read_range_batches, start_range_consumer
from kafkalog.ranges import check_ranges, decode_batch, ordered_ranges
from kafkalog.ranges import read_range_batches as read_range_batches_decoded
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.registry import default_registry

STRETCH_OFFSETS = 8_000
"""Offsets one job reads (~16 MB of ~2 KB traces): enough that a job's fixed costs (a seek, a query) are
small, few enough that the first table comes soon and the workers never wait for each other long
(5,000 and 8,000 measured alike here; 20,000 left a worker idle at the end)."""


@dataclass(frozen=True)
class Stretch:
    """Offsets ``[start, end)`` of one partition: one job."""

    kafka: KafkaClients
    topic: str
    partition: int
    start: int
    end: int
    stall_timeout_s: float


def stretches(kafka: KafkaClients, ranges: Sequence[OffsetRange], size: int | None = None,
              stall_timeout_s: float = 60.0) -> list[Stretch]:
    """``ranges`` in reading order, cut into stretches of at most ``size`` (``STRETCH_OFFSETS``) offsets."""
    size = size or STRETCH_OFFSETS
    out = []
    for r in ordered_ranges(ranges):
        for start in range(r.start, r.end, size):
            out.append(Stretch(kafka, r.topic, r.partition, start, min(start + size, r.end), stall_timeout_s))
    return out


async def kafka_tables(
    kafka: KafkaClients, ranges: Sequence[OffsetRange], *, codec: AvroCodec | None = None, workers: int,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[pa.Table]:
    """The dataset records of ``ranges`` as ``RECORD_SCHEMA`` tables, read and decoded in ``workers`` processes.

    Every range is checked first, as ``kafkalog.ranges.read_ranges`` does.

    Raises:
        RangeExpiredError / RangeBeyondEndError / RangeReadStalled / DecodeError / ValueError: as ``read_ranges``.
    """
    await check_ranges(kafka, ranges)
    pool = worker_pool.pool(codec or AvroCodec(default_registry()), workers)
    loop = asyncio.get_running_loop()
    pending: deque[tuple[asyncio.Future, Stretch]] = deque()

    async def finished() -> pa.Table:
        future, stretch = pending.popleft()
        path = await future
        if path is None:
            await _raise_decode_error(stretch, codec)
        return _take_table(path)

    try:
        for stretch in stretches(kafka, ranges, stall_timeout_s=stall_timeout_s):
            pending.append((loop.run_in_executor(pool, _read_stretch, stretch), stretch))
            if len(pending) >= 2 * workers:
                yield await finished()
        while pending:
            yield await finished()
    finally:
        for future, _ in pending:  # not wanted (the caller stopped, or an error): nor are their files
            if not future.cancel():
                future.add_done_callback(_remove_file)


def _remove_file(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is None and future.result() is not None:
        with contextlib.suppress(OSError):
            os.remove(future.result())


def _take_table(path: str) -> pa.Table:
    """The table a worker wrote, mapped (not copied) into this process; the file is gone once it is mapped."""
    try:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()
    finally:
        os.remove(path)


async def _raise_decode_error(stretch: Stretch, codec: AvroCodec | None) -> None:
    """Decode ``stretch`` here, raising the ``DecodeError`` a worker met (exceptions do not all survive pickling)."""
    r = OffsetRange(stretch.topic, stretch.partition, stretch.start, stretch.end)
    async for _ in read_range_batches_decoded(stretch.kafka, [r], codec=codec):
        pass
    raise RuntimeError(f"a worker could not decode {stretch.topic}[{stretch.partition}] offsets "
                       f"[{stretch.start}, {stretch.end}), which decode here")


# --- in the worker -----------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_consumers: dict[KafkaClients, AIOKafkaConsumer] = {}
_written = itertools.count()
_last_used = 0.0
_IDLE_S = 60.0


def _read_stretch(stretch: Stretch) -> str | None:
    """One stretch read and decoded, written as an Arrow IPC file: its path, or None when a record does not decode."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        multiprocessing.util.Finalize(None, _close, exitpriority=20)  # a pool's worker skips atexit
    messages = _loop.run_until_complete(_read(stretch))
    table = worker_pool.column_decoder().decode(
        stretch.topic, stretch.partition, [m.offset for m in messages], [m.value for m in messages])
    if table is None:
        try:
            table = records_table(decode_batch(messages, worker_pool.worker_codec()))
        except DecodeError:
            return None
    path = os.path.join(worker_pool.column_decoder().folder, f"stretch-{next(_written)}.arrow")
    with pa.OSFile(path, "wb") as out, pa.ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)
    return path


async def _read(stretch: Stretch) -> list:
    global _last_used
    consumer = _consumers.get(stretch.kafka)
    if consumer is None or time.monotonic() - _last_used > _IDLE_S:
        # One reader per worker, kept for the next stretch; a new one for another cluster, or after a pause
        # long enough for the broker to have closed the connection (its reconnection logs errors).
        await _stop_consumers()
        consumer = _consumers[stretch.kafka] = await start_range_consumer(stretch.kafka)
    messages: list = []
    try:
        async for batch in read_range_batches(consumer, TopicPartition(stretch.topic, stretch.partition),
                                              stretch.start, stretch.end, batch_records=stretch.end - stretch.start,
                                              stall_timeout_s=stretch.stall_timeout_s):
            messages += batch
    finally:
        consumer.unsubscribe()  # no fetching past the stretch while the worker waits for its next job
        _last_used = time.monotonic()
    return messages


async def _stop_consumers() -> None:
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its broker may be gone: nothing to report
    try:
        for consumer in _consumers.values():
            with contextlib.suppress(Exception):
                await consumer.stop()
    finally:
        quiet.setLevel(level)
    _consumers.clear()


def _close() -> None:
    """At the worker's exit: stop its consumer (unstopped, asyncio reports its pending tasks), close the loop."""
    if _loop is not None:
        _loop.run_until_complete(_stop_consumers())
        _loop.close()
