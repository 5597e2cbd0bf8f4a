"""List pages cut from read-ahead runs: one query serves the next several pages of a cursor walk.

A page query costs ClickHouse about the same for 100 rows as for 1000 (it
reads whole granules either way), so a page that misses reads a run of rows
ahead and keeps it; the next pages of the walk are sliced from it, by any
client. A run is the first N merged rows after a cursor at one warehouse
generation, indexed by the cursor after each row, so any page inside it is
exactly what a query would return at that generation: every write drops
every run (``Warehouse.generation``), and without a generation (a ClickHouse
server, other writers) nothing is kept.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable

from api.cursor import Cursor, encode_cursor
from api.queries.keyset import Run
from api.reader import WarehouseReader
from warehouse.client import Warehouse

Fetch = Callable[[Warehouse, Cursor, int], Run]
"""``fetch(warehouse, after, n)``: the first ``n`` rows after ``after``, merged (``api.queries.keyset.run``)."""


def page_json(lines: list[bytes], next_cursor: Cursor | None, limit: int) -> bytes:
    cursor = b'"' + encode_cursor(next_cursor).encode() + b'"' if next_cursor is not None else b"null"
    return b'{"items":[' + b",".join(lines) + b'],"next_cursor":' + cursor + b',"limit":' + str(limit).encode() + b"}"


class ReadAhead:
    """Pages of one list, sliced from runs of ``rows`` rows; at most ``runs`` runs kept."""

    def __init__(self, reader: WarehouseReader, *, rows: int = 1000, runs: int = 512) -> None:
        self.reader = reader
        self.rows = rows
        self.max_runs = runs
        self._runs: OrderedDict[tuple[Hashable, Cursor], Run] = OrderedDict()
        self._by_scope: dict[Hashable, set[tuple[Hashable, Cursor]]] = {}
        self._generation: int | None = None
        self._in_flight: dict[tuple, asyncio.Future] = {}
        self.queries = 0
        self.pages = 0

    def _drop_all(self, generation: int | None) -> None:
        self._runs.clear()
        self._by_scope.clear()
        self._generation = generation

    def _find(self, scope: Hashable, after: Cursor, limit: int
              ) -> tuple[Run, tuple[list[bytes], Cursor | None]] | None:
        for run_key in self._by_scope.get(scope, ()):
            run = self._runs[run_key]
            found = run.page(after, limit)
            if found is not None:
                self._runs.move_to_end(run_key)
                return run, found
        return None

    def _keep(self, scope: Hashable, run: Run) -> None:
        run_key = (scope, run.start)
        self._runs[run_key] = run
        self._by_scope.setdefault(scope, set()).add(run_key)
        while len(self._runs) > self.max_runs:
            (old_scope, old_start), _ = self._runs.popitem(last=False)
            self._by_scope[old_scope].discard((old_scope, old_start))

    def _fetch(self, scope: Hashable, start: Cursor, asked: int, fetch: Fetch, generation: int) -> asyncio.Future:
        """The run of ``asked`` rows after ``start``, kept once read unless a write came in between.

        One query per (generation, scope, start), however many callers ask while it runs.
        """
        flight = (generation, scope, start)
        pending = self._in_flight.get(flight)
        if pending is not None:
            return pending
        self.queries += 1
        pending = asyncio.ensure_future(self.reader.run(lambda w: fetch(w, start, asked)))
        self._in_flight[flight] = pending

        def done(future: asyncio.Future) -> None:
            self._in_flight.pop(flight, None)
            if future.cancelled() or future.exception() is not None:
                return  # a caller waiting on it gets the error; a read-ahead nobody waits on is dropped
            if self.reader.generation == generation == self._generation and (scope, start) not in self._runs:
                self._keep(scope, future.result())

        pending.add_done_callback(done)
        return pending

    async def page(self, scope: Hashable, after: Cursor, limit: int, fetch: Fetch
                   ) -> tuple[list[bytes], Cursor | None]:
        """The rows of the page after ``after`` and the position its next cursor names (None: not full).

        A walk that has passed the middle of a run has the run after it read in the background:
        its next pages need exactly that run, so walkers no longer all stall at a run's end on the
        one query that reads the next. Runs are not guessed any further ahead: measured, queued
        speculative queries in front of real misses on the one warehouse thread cut the throughput
        of scattered walks by more than half.
        """
        self.pages += 1
        generation = self.reader.generation
        if generation is None or self.max_runs == 0:
            self.queries += 1
            run = await self.reader.run(lambda w: fetch(w, after, limit))
            return run.page(after, limit)
        if generation != self._generation:
            self._drop_all(generation)
        # A multiple of the page size, so a walk's page boundaries meet the run's end.
        asked = limit * max(1, self.rows // limit)
        hit = self._find(scope, after, limit)
        if hit is not None:
            run, (lines, next_cursor) = hit
            if next_cursor is not None and not run.complete and run.index[next_cursor] * 2 >= len(run.lines):
                following = run.cursors[-1]
                if (scope, following) not in self._runs:
                    self._fetch(scope, following, asked, fetch, generation)
            return lines, next_cursor
        run = await asyncio.shield(self._fetch(scope, after, asked, fetch, generation))
        return run.page(after, limit)
