"""The API's way into the warehouse: one thread for its calls, and a cache of answers.

Warehouse calls block, so handlers run them on the API's own
``WarehouseThread``, off the event loop. The cache keeps finished response
bodies keyed by the query; it is used only when the warehouse says when it changes (``Warehouse.generation``: an embedded
warehouse, whose only writer is this process) and is dropped at every write,
so an answer is never older than the last write. With a ClickHouse server
(other writers), every read goes to the server.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from warehouse.client import Warehouse
from warehouse.executor import WarehouseThread
from warehouse.trace_index import TraceIndex

T = TypeVar("T")


class WarehouseReader:
    """Runs functions of the warehouse on one thread; caches what ``cached`` is asked to.

    Identical questions asked while one is running share its answer rather
    than queue up behind it on the warehouse thread.
    """

    def __init__(self, warehouse_factory: Callable[[], Warehouse], *, cache_entries: int = 4096) -> None:
        self._thread = WarehouseThread(warehouse_factory, name="api-warehouse")
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_generation: int | None = None
        self._in_flight: dict[Hashable, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    @property
    def generation(self) -> int | None:
        """The warehouse's write generation (None: unknown, or another process may write)."""
        return self._thread.warehouse.generation if self._thread.warehouse is not None else None

    @property
    def trace_index(self) -> TraceIndex | None:
        """The warehouse's trace index, once the warehouse is open (None with a server)."""
        return self._thread.warehouse.trace_index if self._thread.warehouse is not None else None

    async def run(self, fn: Callable[[Warehouse], T]) -> T:
        """``fn(warehouse)`` on the reader's thread (the warehouse opens on first use)."""
        return await self._thread.run(fn)

    async def cached(self, key: Hashable, fn: Callable[[Warehouse], T]) -> T:
        """Like ``run``, but an answer for ``key`` is reused until the warehouse is written to."""
        generation = self.generation
        if generation is not None and self._cache_entries:
            if generation != self._cache_generation:
                self._cache.clear()
                self._cache_generation = generation
            elif key in self._cache:
                self.hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
        if generation is None or not self._cache_entries:
            self.misses += 1
            return await self.run(fn)
        pending = self._in_flight.get((generation, key))
        if pending is not None:  # the same question is being asked already: share its answer
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future = asyncio.ensure_future(self.run(fn))
        self._in_flight[(generation, key)] = future
        try:
            value = await asyncio.shield(future)
        finally:
            self._in_flight.pop((generation, key), None)
        # A write during the query may or may not be in the answer: keep it only if none happened.
        if self.generation == generation == self._cache_generation:
            self._cache[key] = value
            if len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return value

    def runner(self) -> Callable[[Callable[[Warehouse], Any]], Any]:
        """A warehouse runner usable from any event loop (dataset export runs on its own)."""
        return self._thread.run

    def close(self) -> None:
        self._thread.close()
