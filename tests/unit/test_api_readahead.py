"""List walks over a model of the warehouse: read-ahead runs, the merge across partitions, arrivals mid-walk.

``Table.fetch`` answers as ``api.queries.keyset.run`` does (per partition, the
first ``n`` rows from the cursor's position, in offset order), without SQL.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from api.cursor import Cursor, Order, decode_cursor, encode_cursor
from api.queries.keyset import Run, per_partition
from api.readahead import ReadAhead

pytestmark = [pytest.mark.unit, pytest.mark.asyncio, pytest.mark.timeout(30)]


class Table:
    """Rows (partition, offset, ingested_ms) and a write generation, read the way the warehouse reader runs functions."""

    def __init__(self, keys: list[tuple[int, int, int]]) -> None:
        self.keys = list(keys)
        self.generation: int | None = 1
        self.queries = 0
        self.starts: list[Cursor] = []

    async def run(self, fn):
        await asyncio.sleep(0.01)  # a query takes a while; identical requests overlap
        return fn(self)

    def fetch(self, _w, after: Cursor, n: int) -> Run:
        self.queries += 1
        self.starts.append(after)
        desc = after.order is Order.DESC
        lines = []
        partitions = sorted({k[0] for k in self.keys})
        # As keyset.run reads: twice an even share of the run from each partition, at least a page
        # (10 rows here, the largest page these tests ask for).
        each = per_partition(n, len(partitions), floor=10)
        for p in partitions:
            position = after.position(p)
            rows = sorted((k for k in self.keys if k[0] == p and (
                position is None or (k[1] < position if desc else k[1] > position))), reverse=desc)
            lines += [_line(*k) for k in rows[:each]]
        random.Random(len(lines)).shuffle(lines)  # UNION ALL interleaves its subqueries' blocks
        return Run.parse(after, b"".join(lines), n, each)

    def write(self, *keys: tuple[int, int, int]) -> None:
        self.keys += keys
        if self.generation is not None:
            self.generation += 1


def _line(partition: int, offset: int, ingested_ms: int) -> bytes:
    row = {"partition": partition, "offset": offset, "ingested_at": f"2026-11-30T08:{ingested_ms // 1000:02d}:"
           f"{ingested_ms % 1000:03d}Z", "ms": ingested_ms}
    return json.dumps(row, separators=(",", ":")).encode() + b"\n"


def keys_of(lines: list[bytes]) -> list[tuple[int, int, int]]:
    return [(row["partition"], row["offset"], row["ms"]) for row in map(json.loads, lines)]


def merged(keys: list[tuple[int, int, int]], order: Order) -> list[tuple[int, int, int]]:
    """The walk's order: by (ingested_at, partition, offset), newest first for desc."""
    return sorted(keys, key=lambda k: (k[2], k[0], k[1]), reverse=order is Order.DESC)


def log(partitions: int, per_partition: int, seed: int = 1) -> list[tuple[int, int, int]]:
    """Rows as a materializer writes them: offsets in order per partition, the store time never going back."""
    rng, keys, clock = random.Random(seed), [], 0
    next_offset = [0] * partitions
    for _ in range(partitions * per_partition):
        p = rng.randrange(partitions)
        clock += rng.choice((0, 0, 1, 3))  # ties across partitions happen (one insert holds several)
        keys.append((p, next_offset[p], clock))
        next_offset[p] += rng.choice((1, 1, 1, 2))  # gaps: dead-lettered offsets, transaction markers
    return keys


async def walk(pages: ReadAhead, table: Table, limit: int, order: Order = Order.ASC, between=None
               ) -> list[tuple[int, int, int]]:
    seen, after = [], Cursor.start(order)
    while True:
        lines, nxt = await pages.page(("all", order), after, limit, table.fetch)
        seen += keys_of(lines)
        assert len(lines) <= limit
        if nxt is None:
            assert len(lines) < limit
            return seen
        assert len(lines) == limit
        after = decode_cursor(encode_cursor(nxt), order)  # through the text a client holds
        if between is not None:
            between()


@pytest.mark.parametrize("order", list(Order))
async def test_a_walk_is_sliced_from_few_queries_and_sees_every_row_once_in_order(order):
    table = Table(log(3, 40))
    pages = ReadAhead(table, rows=25)
    assert await walk(pages, table, limit=10, order=order) == merged(table.keys, order)
    # 12 pages of 10 from 6 runs of 20 rows (a multiple of the page size), and one query that finds the end.
    assert table.queries == 7 and len(set(table.starts)) == 7
    assert await walk(pages, table, limit=10, order=order) == merged(table.keys, order)
    assert table.queries == 7  # the second walk: no query


async def body_walk(pages: ReadAhead, table: Table, limit: int) -> list[bytes]:
    """A walk through ``page_body``, as the API answers it: the page bodies, in order."""
    bodies, after = [], Cursor.start(Order.ASC)
    while True:
        body = await pages.page_body(("all", Order.ASC), after, limit, table.fetch)
        bodies.append(body)
        next_cursor = json.loads(body)["next_cursor"]
        if next_cursor is None:
            return bodies
        after = decode_cursor(next_cursor, Order.ASC)


async def test_kept_runs_stay_within_their_row_budget_and_walks_still_see_every_row():
    table = Table(log(2, 100))
    pages = ReadAhead(table, rows=20, kept_rows=50)
    kept = []
    keep = pages._keep

    def keeping(scope, run):
        keep(scope, run)
        kept.append(sum(len(r.lines) for r in pages._runs.values()))
    pages._keep = keeping
    bodies = await body_walk(pages, table, limit=10)
    items = [item for body in bodies for item in json.loads(body)["items"]]
    assert [(i["partition"], i["offset"], i["ms"]) for i in items] == merged(table.keys, Order.ASC)
    assert len(kept) >= 10 and max(kept) <= 50


async def test_a_page_cut_once_is_served_again_byte_for_byte_without_a_query():
    table = Table(log(3, 40))
    pages = ReadAhead(table, rows=25)
    first = await body_walk(pages, table, limit=10)
    queries = table.queries
    assert await body_walk(pages, table, limit=10) == first
    assert table.queries == queries
    table.write((0, 10_000, 10_000))  # a write: the next walk is cut afresh and shows the new row
    again = await body_walk(pages, table, limit=10)
    assert table.queries > queries
    assert b'"offset":10000' in again[-1]


async def test_a_write_drops_every_run_so_new_rows_show_up():
    table = Table([(0, o, o) for o in range(30)])
    pages = ReadAhead(table, rows=100)
    assert len(await walk(pages, table, limit=10)) == 30
    table.write((0, 30, 30), (1, 0, 31))
    assert await walk(pages, table, limit=10) == merged(table.keys, Order.ASC)


async def test_identical_misses_share_one_query_and_no_generation_means_no_runs():
    table = Table([(0, o, o) for o in range(50)])
    pages = ReadAhead(table, rows=20)
    start = Cursor.start(Order.ASC)
    answers = await asyncio.gather(*(pages.page("all", start, 10, table.fetch) for _ in range(8)))
    assert table.starts.count(start) == 1 and all(a == answers[0] for a in answers)
    before = table.queries
    table.generation = None  # a ClickHouse server: other processes write
    await pages.page("all", start, 10, table.fetch)
    await pages.page("all", start, 10, table.fetch)
    assert table.queries == before + 2


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("seed", range(6))
async def test_rows_arriving_mid_walk_follow_the_stated_rule(seed, cached, order):
    """Present at the start: served exactly once. Arriving later: asc serves it once, desc never."""
    rng = random.Random(seed)
    partitions = rng.choice((1, 3, 4))
    table = Table(log(partitions, rng.randrange(0, 30), seed))
    table.generation = 1 if cached else None
    present = list(table.keys)
    next_offset = {p: max((k[1] for k in table.keys if k[0] == p), default=-1) + 1 for p in range(partitions + 1)}
    clock = max((k[2] for k in table.keys), default=0)
    arrived: list[tuple[int, int, int]] = []

    def arrive() -> None:
        nonlocal clock
        for _ in range(rng.randrange(0, 4) if len(arrived) < 40 else 0):  # then the walk can end
            p = rng.randrange(partitions + 1)  # now and then a partition the walk has never seen
            clock += 1
            arrived.append((p, next_offset[p], clock))
            next_offset[p] += 1
            table.write(arrived[-1])

    pages = ReadAhead(table, rows=rng.choice((7, 20, 100)), kept_rows=100_000 if cached else 0)
    seen = await walk(pages, table, limit=rng.choice((1, 3, 7)), order=order, between=arrive)
    assert len(seen) == len(set(seen)), "a row was served twice"
    assert sorted(k for k in seen if k in present) == sorted(present), "a row present at the start was skipped"
    later = [k for k in seen if k not in present]
    if order is Order.DESC:
        assert later == []
    else:  # every arrival came before the last page's query (arrivals happen between pages)
        assert later == arrived
    for p in range(partitions + 1):  # each partition is served in offset order
        offsets = [k[1] for k in seen if k[0] == p]
        assert offsets == sorted(offsets, reverse=order is Order.DESC)
