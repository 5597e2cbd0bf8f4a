"""The one thread a user of the warehouse calls it on: blocking calls off the event loop, one at a time.

Warehouse calls block, so async code (the materializer's writer, the API's
reader, an export in a process without a worker) runs them here. One thread
per user keeps its calls in order, and the warehouse is opened on that thread
on first use, so opening (which may wait on a server) never blocks the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from warehouse.client import Warehouse

T = TypeVar("T")


class WarehouseThread:
    """Runs functions of one warehouse on one thread of its own, opening it from ``factory`` when first needed."""

    def __init__(self, factory: Callable[[], Warehouse], *, name: str = "warehouse") -> None:
        self._factory = factory
        self.warehouse: Warehouse | None = None
        """The open warehouse; None until the first call (or after ``reopen``)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def _call(self, fn: Callable[[Warehouse], T]) -> T:
        if self.warehouse is None:
            self.warehouse = self._factory()
        return fn(self.warehouse)

    async def run(self, fn: Callable[[Warehouse], T]) -> T:
        """``fn(warehouse)`` on the thread, from whichever event loop awaits it."""
        return await asyncio.wrap_future(self._executor.submit(self._call, fn))

    def reopen(self) -> None:
        """Open the warehouse afresh on the next call (a server connection that failed)."""
        self.warehouse = None

    def close(self) -> None:
        """Wait for the calls in progress, then stop the thread."""
        self._executor.shutdown(wait=True)
