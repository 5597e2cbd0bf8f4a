"""Keyset pages of a table keyed by (topic, partition, offset), merged across partitions.

A page is two queries. The first reads only the key columns: per partition, a
subquery that reads in primary-key order from that partition's cursor
position and stops after ``n`` rows (``partition = p AND offset > pos`` or
``offset < pos``, both pruned by the primary key), all in one UNION ALL. The
keys are merged here by (ingested_at, partition, offset), ascending or
descending: the order in which the warehouse stored the rows, newest first
for ``desc``. The second reads the list's columns of the merged rows only:
per partition, the span of offsets merged (with the same conditions), pruned
by the primary key too. Measured at
100k traces and 4 partitions, that is a third cheaper than reading every
column in every partition's subquery: a column costs about the same per
subquery whether 100 or 1000 of its rows are read.

No FINAL: a ReplacingMergeTree row is duplicated only until its parts merge
(a materializer that crashed and re-wrote a batch), and ``LIMIT 1 BY`` drops
the copy for far less (measured: FINAL doubled a page's time). Rows never
change once written, so the two queries agree.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from typing import Any

from api.cursor import Cursor, Order
from warehouse.client import Warehouse
from warehouse.errors import WarehouseError

KEY_COLUMNS = "partition, offset, ingested_at"
"""The first columns of every list query, in this order: rows are matched by them from the start of each line."""

_KEY = re.compile(rb'^\{"partition":(\d+),"offset":(\d+),"ingested_at":"([^"]*)"')

_partitions: dict[tuple[str, str, str], int] = {}
"""(database, table, topic) → partitions seen so far. Kafka never removes a partition, so this only grows."""


@dataclass
class Run:
    """The first rows after ``start`` in the walk's merged order, and where the walk stands after each.

    Kept runs hold many rows, so each row costs no object the garbage collector tracks: positions
    are plain tuples of ints, made into a ``Cursor`` only for the pages handed out (measured: a
    ``Cursor`` per kept row made full collections take up to 130 ms, stalling every walker).
    """

    start: Cursor
    lines: list[bytes]
    positions: list[tuple[int, ...]]
    """``positions[i]``: the cursor's positions that continue after ``lines[i]``."""
    complete: bool
    """Nothing followed the last row: every partition came back with fewer rows than asked, all merged in."""
    partitions: int = 0
    """One more than the highest partition in the rows."""
    keys: list[tuple[int, int]] = field(default_factory=list)
    """``keys[i]``: the (partition, offset) of ``lines[i]``."""
    index: dict[tuple[int, ...], int] = field(default_factory=dict)
    """positions → the row they continue after."""

    def cursor(self, row: int) -> Cursor:
        """The cursor that continues after row ``row``."""
        return Cursor(self.start.order, self.positions[row])

    def rows_after(self, cursor: Cursor) -> int | None:
        """How many of the run's rows follow ``cursor``; None when the run does not hold it."""
        if cursor == self.start:
            return len(self.lines)
        if cursor.order is not self.start.order or (at := self.index.get(cursor.positions)) is None:
            return None
        return len(self.lines) - at - 1

    @classmethod
    def parse(cls, start: Cursor, rows: bytes, asked: int, each: int | None = None) -> Run:
        """Merge JSONEachRow ``rows``, up to ``each`` (default ``asked``) per partition in offset order, into
        the walk's first ``asked`` rows at most.

        A partition that filled its ``each`` rows may have more: the merge stops
        right after that partition's last row is taken, since its unread rows
        could come before anything later. So a run that stops early still holds
        at least ``each`` rows.
        """
        each = asked if each is None else each
        desc = start.order is Order.DESC
        groups: dict[int, list[tuple[bytes, int, int, bytes]]] = {}
        for line in rows.splitlines():
            match = _KEY.match(line)
            if match is None:
                raise ValueError(f"a list row does not start with {KEY_COLUMNS}: {line[:80]!r}")
            partition, offset = int(match[1]), int(match[2])
            groups.setdefault(partition, []).append((match[3], partition, offset, line))
        partitions = max(groups, default=-1) + 1
        for group in groups.values():
            group.sort(key=lambda row: row[2], reverse=desc)
        if start.positions is not None:
            positions = [start.position(p) for p in range(max(partitions, len(start.positions)))]
        else:  # the first page of a desc walk pins each partition just above its newest row
            positions = [groups[p][0][2] + 1 if p in groups else 0 for p in range(partitions)]
        left = {p: len(group) for p, group in groups.items() if len(group) >= each}
        lines: list[bytes] = []
        after: list[tuple[int, ...]] = []
        keys: list[tuple[int, int]] = []
        stopped = False
        for _, partition, offset, line in heapq.merge(*groups.values(), reverse=desc):
            lines.append(line)
            keys.append((partition, offset))
            positions[partition] = offset
            after.append(Cursor.of(start.order, tuple(positions)).positions)
            if len(lines) == asked:
                stopped = True
                break
            if partition in left:
                left[partition] -= 1
                if left[partition] == 0:
                    stopped = True
                    break
        run = cls(start, lines, after, complete=not stopped, partitions=partitions, keys=keys)
        run.index = {position: n for n, position in enumerate(after)}
        return run

    def page(self, after: Cursor, limit: int) -> tuple[list[bytes], Cursor | None] | None:
        """The page after ``after`` and the cursor that follows it, or None when this run cannot tell.

        The cursor is None when the page is the last: fewer than ``limit`` rows were left.
        """
        left = self.rows_after(after)
        if left is None:
            return None
        first = len(self.lines) - left
        if left >= limit:
            return self.lines[first:first + limit], self.cursor(first + limit - 1)
        if self.complete:
            return self.lines[first:], None
        return None


PAGE_FLOOR = 1000
"""At least this many rows per partition are read for a run (more than any list's page limit, 500), so a
run that stops early still holds a whole page."""


def per_partition(asked: int, partitions: int, floor: int = PAGE_FLOOR) -> int:
    """Rows to read from each partition for a run of ``asked`` rows over ``partitions``.

    Twice an even share, not ``asked`` from each: the merge takes about ``asked / partitions`` from
    each when they fill alike, and reading ``asked`` keys from every partition read keys it never
    used (measured: a 4,000-row run over 4 partitions at 200,000 traces, 60-62 ms against 69-70 ms).
    A partition that fills faster ends the run early (still correct; the walk's next run goes on
    from there).
    """
    return min(asked, max(-(-2 * asked // max(partitions, 1)), floor))


def run(warehouse: Warehouse, table: str, columns: str, topic: str, start: Cursor, asked: int,
        conditions: list[str], params: dict[str, Any]) -> Run:
    """The first ``asked`` rows of ``table`` after ``start`` that meet ``conditions``, merged.

    ``columns`` must begin with ``KEY_COLUMNS``. Two queries (keys, then
    columns by key), and one more for the keys when they show a partition
    not known before.

    Raises:
        WarehouseError: as ``Warehouse.query_json``, or a row listed by the first query was gone by the second
            (the table was dropped or truncated meanwhile).
    """
    known = (warehouse.database, table, topic)
    # Partitions seen, not the cursor's length: a cursor may name more (it is the client's text), and the
    # subquery for partitions past those seen finds any that exist.
    partitions = _partitions.get(known, 1)
    where = {**params, "db": warehouse.database, "topic": topic}
    while True:
        each = per_partition(asked, partitions)
        sql, values = _union(table, start, partitions, each, conditions)
        found = Run.parse(start, warehouse.query_json(sql, {**where, **values}), asked, each)
        if found.partitions <= partitions:
            break
        partitions = _partitions[known] = max(found.partitions, _partitions.get(known, 1))
    if found.keys:
        # The merge takes a prefix of each partition's rows, so the chosen rows of a partition are the rows
        # between its first and last chosen offsets that meet the conditions: ranges the primary key prunes
        # to, cheaper than a set of keys (measured 12 against 20 ms for 1,000 rows at 100k traces).
        spans: dict[int, tuple[int, int]] = {}
        for partition, offset in found.keys:
            low, high = spans.get(partition, (offset, offset))
            spans[partition] = (min(low, offset), max(high, offset))
        values = {"db": warehouse.database, "topic": topic, **params}
        ranges = []
        for partition, (low, high) in spans.items():
            values[f"rp{partition}"], values[f"lo{partition}"], values[f"hi{partition}"] = partition, low, high
            ranges.append(f"(partition = {{rp{partition}:UInt32}} AND offset BETWEEN {{lo{partition}:UInt64}} "
                          f"AND {{hi{partition}:UInt64}})")
        rows = warehouse.query_json(
            f"SELECT {columns} FROM {{db:Identifier}}.{table} WHERE topic = {{topic:String}} "
            f"AND ({' OR '.join(ranges)}){''.join(f' AND {c}' for c in conditions)} "
            "LIMIT 1 BY partition, offset SETTINGS max_threads = 1", values)
        by_key = {}
        for line in rows.splitlines():
            match = _KEY.match(line)
            if match is None:
                raise ValueError(f"a list row does not start with {KEY_COLUMNS}: {line[:80]!r}")
            by_key[int(match[1]), int(match[2])] = line
        try:
            found.lines = [by_key[key] for key in found.keys]
        except KeyError as exc:
            raise WarehouseError(f"{table} row {topic}[{exc.args[0][0]}]@{exc.args[0][1]} was listed and then not "
                                 "found; was the table dropped or truncated? Ask for the page again") from exc
    return found


# One stream per partition read, in small blocks: with the default (a stream per thread over the
# partition's granules, 65k-row blocks) a page at the start of a 1M-row walk read 3-4x longer (measured
# 50 ms against 11-15 ms for the key query); pages deep in the walk are no slower.
_ONE_STREAM = " SETTINGS max_threads = 1, max_block_size = 1024"


def _union(table: str, start: Cursor, partitions: int, asked: int, conditions: list[str]
           ) -> tuple[str, dict[str, Any]]:
    desc = start.order is Order.DESC
    base = f"SELECT {KEY_COLUMNS} FROM {{db:Identifier}}.{table} WHERE topic = {{topic:String}}"
    where = "".join(f" AND {condition}" for condition in conditions)
    values: dict[str, Any] = {"n": asked, "partitions": partitions}
    parts = []
    for p in range(partitions):
        position = start.position(p)
        if desc and position == 0:
            continue  # nothing left in this partition
        values[f"p{p}"] = p
        bound = ""
        if position is not None:
            values[f"o{p}"] = position
            bound = f" AND offset {'<' if desc else '>'} {{o{p}:{'UInt64' if desc else 'Int64'}}}"
        parts.append(f"({base} AND partition = {{p{p}:UInt32}}{bound}{where} "
                     f"ORDER BY offset{' DESC' if desc else ''} LIMIT 1 BY offset LIMIT {{n:UInt32}}{_ONE_STREAM})")
    # Finds nothing (no granule read) unless the topic gained partitions; then the caller asks again.
    parts.append(f"({base} AND partition >= {{partitions:UInt32}} ORDER BY partition DESC, offset DESC LIMIT 1)")
    return " UNION ALL ".join(parts), values
