"""The processes a dataset read decodes in: one pool per (size, schemas), kept for the next read.

Workers are spawned, not forked (the reading process has threads: the event
loop's, the warehouse's), and each rebuilds the reader's schema registry, so
a schema registered at run time decodes there too. What a worker keeps
between jobs (its codec, its ClickHouse engine, its Kafka consumers) lives
here, one of each per process.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import multiprocessing.util
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor

from dataset.kafka_columns import ColumnDecoder, scratch_parent
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

_POOLS: dict[tuple, tuple[ProcessPoolExecutor, str]] = {}
_codec: AvroCodec | None = None
_decoder: ColumnDecoder | None = None
_scratch: str | None = None


def _start_worker(schemas: list[tuple[str, list[dict]]], scratch: str) -> None:
    global _codec, _scratch
    _scratch = scratch
    registry = SchemaRegistry()
    for name, definitions in schemas:
        for definition in definitions:
            registry.register(name, definition)
    _codec = AvroCodec(registry)


def worker_codec() -> AvroCodec:
    """In a worker: the codec of the reading process's schemas."""
    if _codec is None:
        raise RuntimeError("worker_codec() is for the pool's worker processes")
    return _codec


def column_decoder() -> ColumnDecoder:
    """In a worker: its ClickHouse Avro decoder, opened on first use (``dataset.kafka_columns``)."""
    global _decoder
    if _decoder is None:
        _decoder = ColumnDecoder(worker_codec().registry, parent=_scratch)
        # A pool's worker leaves through os._exit, which skips atexit; multiprocessing runs its finalizers.
        multiprocessing.util.Finalize(None, _decoder.close, exitpriority=10)
    return _decoder


def pool(codec: AvroCodec, workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that decode with ``codec``'s schemas; kept for the next read, replaced
    once broken (the read that was using it failed with ``BrokenProcessPool``)."""
    registry = codec.registry
    schemas = [(name, [s.definition for s in registry.versions(name)]) for name in registry.names()]
    key = (workers, tuple((name, tuple(s.fingerprint for s in registry.versions(name))) for name, _ in schemas))
    found, scratch = _POOLS.get(key, (None, ""))
    if found is not None and getattr(found, "_broken", False):  # a worker died (killed, out of memory): start anew
        found.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)  # what the dead worker left
        found = None
    if found is None:
        # The workers' files go in one folder of this process's, removed when it exits, killed workers or not.
        scratch = tempfile.mkdtemp(prefix="tracestream-pool-", dir=scratch_parent())
        atexit.register(shutil.rmtree, scratch, True)
        found = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_start_worker, initargs=(schemas, scratch))
        _POOLS[key] = (found, scratch)
    return found


def _ready(columns: bool) -> bool:
    if columns:
        column_decoder()
    return _codec is not None


async def start_workers(codec: AvroCodec, workers: int, *, columns: bool = False) -> None:
    """Start (or find) the pool of ``workers`` processes for ``codec``, and wait until each is up.

    Spawning imports the decoding stack in every worker (about a second each here); a caller that
    times reads starts them first. ``columns``: also start the engine ``dataset_tables`` decodes with.
    """
    found, loop = pool(codec, workers), asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(found, _ready, columns) for _ in range(workers)))
