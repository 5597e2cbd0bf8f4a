"""Stream a dataset export over HTTP: ``dataset.export.export_dataset``'s bytes, chunk by chunk.

``export_dataset`` writes to a file object, so it runs on a thread of its own
(with its own event loop) writing into a bounded queue: a slow client slows
the export down instead of letting it pile up in memory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from dataset.export import export_dataset
from dataset.manifest import Manifest
from dataset.reader import content_mismatch

log = logging.getLogger(__name__)

_CHUNK_BYTES = 256 * 1024
_QUEUE_CHUNKS = 8
_DONE = object()


class _QueueSink:
    """A write-only file that hands chunks to the HTTP side, waiting while the queue is full."""

    def __init__(self, chunks: queue.Queue, cancelled: threading.Event) -> None:
        self.chunks, self.cancelled, self.buffer = chunks, cancelled, bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= _CHUNK_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.put(bytes(self.buffer))
            self.buffer.clear()

    def put(self, item: Any) -> None:
        while not self.cancelled.is_set():
            try:
                self.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Cancelled()


class _Cancelled(Exception):
    """The client went away; the export thread stops."""


async def stream_export(manifest: Manifest, fmt: str, split: str, **sources: Any) -> AsyncIterator[bytes]:
    """Chunks of the export of ``manifest``; ``sources`` are ``export_dataset``'s keyword arguments."""
    chunks: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
    cancelled = threading.Event()
    sink = _QueueSink(chunks, cancelled)

    def produce() -> None:
        try:
            summary = asyncio.run(export_dataset(manifest, fmt, split, sink, **sources))
            sink.flush()
            if (why := content_mismatch(manifest, summary.content_sha256, sources.get("source", "kafka"))) is not None:
                log.error("export: %s", why)
            sink.put(_DONE)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the HTTP side, which ends the response
            try:
                sink.put(exc)
            except _Cancelled:
                pass

    thread = threading.Thread(target=produce, name=f"export-{manifest.name}", daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await loop.run_in_executor(None, chunks.get)
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                log.error("export of %s@%s failed mid-stream: %s", manifest.name, manifest.version, item)
                raise item
            yield item
    finally:
        cancelled.set()
