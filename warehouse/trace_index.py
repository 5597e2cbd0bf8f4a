"""Trace by id at the speed of a key lookup: a SQLite view of the `traces` table.

A ClickHouse point query costs 4–12 ms on one engine thread (it reads whole
granules of every column), far too slow for an API answering hundreds of
lookups a second. So the process that owns the embedded warehouse keeps one
more view of the log beside it: ``trace_id`` → the warehouse's own JSON
answer for that trace (the very bytes ``GET /api/traces/{id}`` returns),
copied out of `traces` right after each batch is written there. A lookup is
then one SQLite B-tree search (~10 µs).

It is a view, never a source of truth: it is filled from the warehouse (which
is filled from the log), it remembers which table it mirrors (the table's
UUID: a dropped and recreated table empties it), it catches up from the
warehouse on its first use, and a trace it does not hold is looked up in the
warehouse. A trace published twice keeps its later offset's version.

With a ClickHouse server there is no index (the API may run anywhere; the
server answers point queries itself, on as many threads as it has).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.trace_fields import TRACE_FIELDS

if TYPE_CHECKING:
    from warehouse.client import Warehouse

log = logging.getLogger(__name__)

TRACE_ANSWER_COLUMNS = ", ".join(
    (*(field.answer for field in TRACE_FIELDS), "schema_version", "topic", "partition", "offset", "ingested_at"))
"""The columns of one trace as the API answers it (``trace_id`` first: the index reads it from the line)."""

_CHUNK_ROWS = 20_000
"""Rows copied per warehouse query while catching up (a few tens of MB of JSON)."""

_TRACE_ID = re.compile(rb'^\{"trace_id":("(?:[^"\\]|\\.)*")')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    trace_id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS mirror (one INTEGER PRIMARY KEY CHECK (one = 1), table_uuid TEXT NOT NULL);
"""

# A later offset of the same partition replaces; a row re-read at the same offset rewrites itself.
_UPSERT = (
    "INSERT INTO answers (trace_id, partition, offset, body) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (trace_id) DO UPDATE SET partition = excluded.partition, offset = excluded.offset, "
    "body = excluded.body WHERE excluded.partition != answers.partition OR excluded.offset >= answers.offset"
)


class TraceIndex:
    """trace_id → JSON answer, mirroring one warehouse's `traces` table; safe from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._caught_up: set[str] = set()
        with self._write_lock:
            self._connection().executescript(_SCHEMA)

    @classmethod
    def beside(cls, folder: Path, database: str) -> TraceIndex:
        """The index of ``database`` in the embedded warehouse at ``folder`` (kept next to it)."""
        return cls(folder.parent / "trace-index" / f"{database}.sqlite3")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")  # a view: after a power cut it is rebuilt
            self._local.connection = connection
        return connection

    def get(self, trace_id: str) -> bytes | None:
        """The trace's JSON answer, or None when the index does not hold it."""
        row = self._connection().execute("SELECT body FROM answers WHERE trace_id = ?", (trace_id,)).fetchone()
        return row[0] if row is not None else None

    def __len__(self) -> int:
        return self._connection().execute("SELECT count(*) FROM answers").fetchone()[0]

    def mirror(self, table_uuid: str) -> None:
        """Mirror the `traces` table with this UUID; anything kept for another table is dropped."""
        with self._write_lock:
            connection = self._connection()
            row = connection.execute("SELECT table_uuid FROM mirror").fetchone()
            if row is not None and row[0] == table_uuid:
                return
            if row is not None:
                log.info("the traces table was recreated; emptying the trace index at %s", self.path)
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM answers")
                connection.execute("DELETE FROM marks")
                connection.execute("INSERT OR REPLACE INTO mirror (one, table_uuid) VALUES (1, ?)", (table_uuid,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            self._caught_up.clear()

    def index_through(self, warehouse: Warehouse, topic: str, last_offsets: dict[int, int]) -> int:
        """Copy the rows of ``topic`` up to ``last_offsets[partition]`` that the index lacks; how many.

        The first call for a topic also catches up every partition the warehouse holds.
        """
        if topic not in self._caught_up:
            held = warehouse.query(
                "SELECT partition, max(offset) FROM {db:Identifier}.traces WHERE topic = {topic:String} "
                "GROUP BY partition", {"db": warehouse.database, "topic": topic})
            last_offsets = {**{int(p): int(o) for p, o in held}, **last_offsets}
            self._caught_up.add(topic)
        copied = 0
        for partition, last in sorted(last_offsets.items()):
            copied += self._copy(warehouse, topic, partition, last)
        return copied

    def _copy(self, warehouse: Warehouse, topic: str, partition: int, last: int) -> int:
        connection = self._connection()
        row = connection.execute("SELECT offset FROM marks WHERE topic = ? AND partition = ?",
                                 (topic, partition)).fetchone()
        after = row[0] if row is not None else -1
        copied = 0
        while after < last:
            lines = warehouse.query_json(
                f"SELECT {TRACE_ANSWER_COLUMNS} FROM {{db:Identifier}}.traces "
                "WHERE topic = {topic:String} AND partition = {p:UInt32} AND offset > {after:Int64} "
                "AND offset <= {last:Int64} ORDER BY offset LIMIT 1 BY offset LIMIT {n:UInt32}",
                {"db": warehouse.database, "topic": topic, "p": partition, "after": after, "last": last,
                 "n": _CHUNK_ROWS},
            ).splitlines()
            reached = last if len(lines) < _CHUNK_ROWS else _offset_of(lines[-1])
            rows = [(_trace_id_of(line), partition, _offset_of(line), line) for line in lines]
            with self._write_lock:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(_UPSERT, rows)
                    connection.execute(
                        "INSERT INTO marks (topic, partition, offset) VALUES (?, ?, ?) "
                        "ON CONFLICT (topic, partition) DO UPDATE SET offset = max(offset, excluded.offset)",
                        (topic, partition, reached))
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            copied += len(rows)
            after = reached
        return copied


def _trace_id_of(line: bytes) -> str:
    match = _TRACE_ID.match(line)
    if match is None:
        raise ValueError(f"a trace answer does not start with its trace_id: {line[:80]!r}")
    quoted = match[1]
    return quoted[1:-1].decode() if b"\\" not in quoted else json.loads(quoted)


_OFFSET = re.compile(rb'"offset":(\d+)')


def _offset_of(line: bytes) -> int:
    # The answer's last columns are topic, partition, offset, ingested_at: the last "offset" key is the column.
    found = _OFFSET.findall(line[-600:])
    if not found:
        raise ValueError(f"a trace answer has no offset: {line[-80:]!r}")
    return int(found[-1])
