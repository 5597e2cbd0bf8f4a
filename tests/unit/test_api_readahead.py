"""Read-ahead runs: pages sliced from one query, dropped at every write, one query for identical misses."""

from __future__ import annotations

import asyncio
import json

import pytest

from api.cursor import START, Position
from api.readahead import ReadAhead

pytestmark = [pytest.mark.unit, pytest.mark.asyncio, pytest.mark.timeout(30)]


class Table:
    """Rows in key order and a write generation, read the way the warehouse reader runs functions."""

    def __init__(self, keys: list[tuple[int, int]]) -> None:
        self.keys = sorted(keys)
        self.generation: int | None = 1
        self.queries = 0
        self.starts: list[Position] = []

    async def run(self, fn):
        await asyncio.sleep(0.01)  # a query takes a while; identical requests overlap
        return fn(self)

    def fetch(self, _w, after: Position, n: int) -> bytes:
        self.queries += 1
        self.starts.append(after)
        rows = [k for k in self.keys if k > tuple(after)][:n]
        return b"".join(json.dumps({"partition": p, "offset": o}, separators=(",", ":")).encode() + b"\n"
                        for p, o in rows)

    def write(self, *keys: tuple[int, int]) -> None:
        self.keys = sorted([*self.keys, *keys])
        self.generation += 1


def offsets(lines: list[bytes]) -> list[tuple[int, int]]:
    return [(json.loads(x)["partition"], json.loads(x)["offset"]) for x in lines]


async def walk(pages: ReadAhead, table: Table, limit: int) -> list[tuple[int, int]]:
    seen, after = [], START
    while True:
        lines, nxt = await pages.page("all", after, limit, table.fetch)
        seen += offsets(lines)
        if nxt is None:
            return seen
        after = nxt


async def test_a_walk_is_sliced_from_few_queries_and_sees_every_row_once():
    table = Table([(p, o) for p in range(3) for o in range(40)])
    pages = ReadAhead(table, rows=25)
    assert await walk(pages, table, limit=10) == table.keys
    # 12 pages of 10 from 6 runs of 20 rows (a multiple of the page size), and one query that finds the end.
    assert table.queries == 7 and len(set(table.starts)) == 7
    assert await walk(pages, table, limit=10) == table.keys and table.queries == 7  # the second walk: no query


async def test_a_write_drops_every_run_so_new_rows_show_up():
    table = Table([(0, o) for o in range(30)])
    pages = ReadAhead(table, rows=100)
    assert len(await walk(pages, table, limit=10)) == 30
    table.write((0, 30), (1, 0))
    assert await walk(pages, table, limit=10) == table.keys


async def test_identical_misses_share_one_query_and_no_generation_means_no_runs():
    table = Table([(0, o) for o in range(50)])
    pages = ReadAhead(table, rows=20)
    answers = await asyncio.gather(*(pages.page("all", START, 10, table.fetch) for _ in range(8)))
    assert table.starts.count(START) == 1 and all(a == answers[0] for a in answers)
    before = table.queries
    table.generation = None  # a ClickHouse server: other processes write
    await pages.page("all", START, 10, table.fetch)
    await pages.page("all", START, 10, table.fetch)
    assert table.queries == before + 2
