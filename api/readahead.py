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
    """Pages of one list, sliced from runs of ``rows`` rows; runs of at most ``kept_rows`` rows in all kept
    (0: none, every page is its query).

    Each cursor a kept run can continue from maps to that run, so finding a page is one lookup
    however many runs are kept; and a page's JSON, once cut, is kept too (up to ``body_bytes``):
    walkers that follow each other (every dashboard opening the list) are answered from it.
    """

    def __init__(self, reader: WarehouseReader, *, rows: int = 4000, kept_rows: int = 256_000,
                 body_bytes: int = 64 * 1024 * 1024) -> None:
        self.reader = reader
        self.rows = rows
        self.kept_rows = kept_rows
        self._rows_kept = 0
        self.body_bytes = body_bytes
        self._runs: OrderedDict[tuple[Hashable, Cursor], Run] = OrderedDict()
        self._at: dict[Hashable, dict[tuple[int, ...] | None, Run]] = {}
        """scope → a cursor's positions → the kept run that serves the most rows after that cursor
        (the scope holds the order)."""
        self._bodies: dict[tuple[Hashable, Cursor, int], bytes] = {}
        self._body_total = 0
        self._generation: int | None = None
        self._in_flight: dict[tuple, asyncio.Future] = {}
        self.queries = 0
        self.pages = 0

    def _drop_all(self, generation: int | None) -> None:
        self._runs.clear()
        self._rows_kept = 0
        self._at.clear()
        self._bodies.clear()
        self._body_total = 0
        self._generation = generation

    def _find(self, scope: Hashable, after: Cursor, limit: int
              ) -> tuple[Run, tuple[list[bytes], Cursor | None]] | None:
        run = self._at.get(scope, {}).get(after.positions)
        if run is None or (found := run.page(after, limit)) is None:
            return None
        self._runs.move_to_end((scope, run.start))
        return run, found

    def _keep(self, scope: Hashable, run: Run) -> None:
        self._runs[(scope, run.start)] = run
        self._rows_kept += len(run.lines)
        at = self._at.setdefault(scope, {})
        rows = len(run.lines)
        for n, positions in enumerate((run.start.positions, *run.positions)):
            held = at.get(positions)
            # A run that knows where the walk ends beats one that holds as many rows but not the end.
            if held is None or (held.rows_after(Cursor(run.start.order, positions)), held.complete) \
                    < (rows - n, run.complete):
                at[positions] = run
        while self._rows_kept > self.kept_rows and len(self._runs) > 1:
            (old_scope, _), old = self._runs.popitem(last=False)
            self._rows_kept -= len(old.lines)
            at = self._at[old_scope]
            for positions in (old.start.positions, *old.positions):
                if at.get(positions) is old:
                    del at[positions]

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

        A walk served from a run has the run after it read in the background: its next pages
        need exactly that run, and asked as soon as the walk enters a run, it is there before the
        walk reaches its end (asked at the middle of 1,000-row runs, 16 walkers in step stalled
        ~35 ms at every run's end). Runs are not guessed any further ahead: measured, queued
        speculative queries in front of real misses on the one warehouse thread cut the throughput
        of scattered walks by more than half.
        """
        self.pages += 1
        generation = self.reader.generation
        if generation is None or self.kept_rows == 0:
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
            if next_cursor is not None and not run.complete:
                following = run.cursor(-1)
                if (scope, following) not in self._runs:
                    self._fetch(scope, following, asked, fetch, generation)
            return lines, next_cursor
        run = await asyncio.shield(self._fetch(scope, after, asked, fetch, generation))
        return run.page(after, limit)

    async def page_body(self, scope: Hashable, after: Cursor, limit: int, fetch: Fetch) -> bytes:
        """The page's JSON (``page_json``), cut once per warehouse generation."""
        key = (scope, after, limit)
        body = self._bodies.get(key)
        if body is not None and self.reader.generation == self._generation:
            self.pages += 1
            return body
        generation = self.reader.generation
        lines, next_cursor = await self.page(scope, after, limit, fetch)
        body = page_json(lines, next_cursor, limit)
        if generation is not None and generation == self.reader.generation == self._generation and self.kept_rows:
            self._bodies[key] = body
            self._body_total += len(body)
            while self._body_total > self.body_bytes:
                self._body_total -= len(self._bodies.pop(next(iter(self._bodies))))
        return body
