"""Dataset pages from the warehouse as Arrow columns, with the hashed bytes written by the engine.

Built record by record in Python, an export from the warehouse costs ~60 µs a
record (dicts, canonical JSON, columns). Here one query per page has
ClickHouse select the records (``dataset.select_sql``), assign their split,
and write each record's canonical JSON (what hash format 1 hashes,
``dataset.hashing.canonical_json`` plus a newline) and, for a JSON Lines
format, its line (``dataset.formats``); Parquet columns come back as Arrow arrays. Python
then hashes a page's bytes in one call and hands whole arrays to the writer.

The engine's JSON equals ``json.dumps(..., sort_keys=True, ensure_ascii=False,
separators=(",", ":"))`` except in three places, each handled:

- strings: ClickHouse writes 9 control characters' escapes in upper case
  (``\\u001F`` where Python writes ``\\u001f``) and escapes U+2028/U+2029; a
  row whose JSON holds one of those escapes is flagged (``python_json``), and
  its bytes are made by Python from the record (read by offset);
- floats: both write the shortest digits that round-trip; Python adds ``.0``
  to an integral value (done here too) and uses an exponent outside
  ``1e-4 <= |x| < 1e16`` (those rows are flagged);
- step order: the canonical record sorts steps by index; a page holding a row
  whose step indexes are not strictly increasing is handed back whole as
  dataset records (``ColumnPage.records``), for the per-record path.

``tests/integration/test_dataset_columns.py`` checks every code point and a
spread of floats against Python, and whole exports against the Kafka path.
Calls block: run ``ColumnPages.next`` on the warehouse's own thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataset.formats import line_writer
from dataset.hashing import CanonicalLines, canonical
from dataset.parquet import PARQUET
from dataset.parquet import SCHEMA as PARQUET_SCHEMA
from dataset.select_sql import filter_sql, split_sql
from dataset.warehouse_reader import (
    RANGE_WHERE,
    range_pages,
    read_offsets_from_warehouse,
    read_range_pages_from_warehouse,
)
from schemas.errors import DatasetIntegrityError
from schemas.trace_fields import STEPS_SQL

if TYPE_CHECKING:
    from dataset.manifest import Manifest
    from dataset.ranges import OffsetRange
    from warehouse.client import Warehouse


def _json(expression: str) -> str:
    return f"toJSONString({expression})"


_SCORE_TEXT = "toString(assumeNotNull(score))"
_SCORE_JSON = (f"if(isNull(score), 'null', if(match({_SCORE_TEXT}, '^-?[0-9]+$'), "
               f"concat({_SCORE_TEXT}, '.0'), {_SCORE_TEXT}))")
_SCORE_AS_PYTHON = (f"(isNull(score) OR score = 0 OR (abs(score) >= 1e-4 AND abs(score) < 1e16 "
                    f"AND position({_SCORE_TEXT}, 'e') = 0))")
_ESCAPES_UNLIKE_PYTHON = r"\\\\u(000[BEF]|001[A-F]|202[89])"
"""The escapes ClickHouse writes where Python writes another (regular expression, as an SQL string literal)."""

# The canonical JSON in three parts, keys sorted: the ``trace`` line puts "id" between the first two
# and "split" between the last two.
_HEAD = ("concat('{\"created_at\":\"', replaceOne(toString(created_at), ' ', 'T'), 'Z\",\"final_answer\":', "
         f"{_json('final_answer')})")
_MIDDLE = (f"concat(',\"meta\":', {_json('mapSort(meta)')}, ',\"model\":', "
           f"if(isNull(model), 'null', {_json('assumeNotNull(model)')}), "
           "',\"offset\":', toString(offset), ',\"partition\":', toString(partition), "
           f"',\"prompt\":', {_json('prompt')}, ',\"score\":', {_SCORE_JSON}, ',\"source\":', {_json('source')})")
_STEPS_JSON = _json("CAST(arrayZip(step_content, step_index, step_type), "
                    "'Array(Tuple(content String, i Int32, type String))')")
_TAIL = (f"concat(',\"steps\":', {_STEPS_JSON}, ',\"topic\":', {_json('topic')}, "
         f"',\"trace_id\":', {_json('trace_id')}, ',\"trace_version\":', toString(trace_version), '}}\\n')")

_ID_JSON = _json("concat(topic, '/', toString(partition), '/', toString(offset))")
_COMPLETION_JSON = _json(  # dataset.formats.render_completion
    "arrayStringConcat(arrayConcat(arrayMap((c, i, t) -> concat('<step i=\"', toString(i), '\" type=\"', t, '\">', c, "
    "'</step>'), step_content, step_index, step_type), [concat('<answer>', final_answer, '</answer>')]), '\\n')")
_LINES = {  # dataset.formats' lines, keys sorted
    "trace": f"concat(json_head, ',\"id\":', {_ID_JSON}, json_middle, ',\"split\":\"', split, '\"', json_tail)",
    "tunix_sft": (f"concat('{{\"completion\":', {_COMPLETION_JSON}, ',\"id\":', {_ID_JSON}, "
                  f"',\"meta\":', {_json('mapSort(meta)')}, ',\"prompt\":', {_json('prompt')}, "
                  f"',\"source\":', {_json('source')}, ',\"split\":\"', split, '\",\"steps\":', {_STEPS_JSON}, "
                  "'}\\n')"),
    "training_example": (f"concat('{{\"final_answer\":', {_json('final_answer')}, ',\"id\":', {_ID_JSON}, "
                         f"',\"messages\":[{{\"content\":', {_json('prompt')}, ',\"role\":\"user\"}},"
                         f"{{\"content\":', {_COMPLETION_JSON}, ',\"role\":\"assistant\"}}],\"metadata\":', "
                         f"{_json('mapSort(meta)')}, ',\"source\":', {_json('source')}, ',\"split\":\"', split, "
                         f"'\",\"steps\":', {_STEPS_JSON}, ',\"trace_id\":', {_json('trace_id')}, '}}\\n')"),
}

_PARQUET_COLUMNS = (
    "concat(topic, '/', toString(partition), '/', toString(offset)) AS id, toString(topic) AS topic, partition, "
    f"trace_id, trace_version, prompt, {STEPS_SQL} AS steps, final_answer, mapSort(meta) AS meta, "
    "toString(source) AS source, toUnixTimestamp64Milli(created_at) AS created_ms, score, model"
)

PAGE_ROWS = 10_000
"""Rows a page holds at most (one query each)."""

_SETTINGS = "SETTINGS output_format_json_escape_forward_slashes = 0, output_format_json_named_tuples_as_objects = 1"


def _page_sql(conditions: list[str], split: str, fmt: str) -> str:
    where = " AND ".join([RANGE_WHERE, *(f"({c})" for c in conditions)])
    inner = (f"SELECT *, {split} AS split, {_HEAD} AS json_head, {_MIDDLE} AS json_middle, {_TAIL} AS json_tail, "
             "arrayAll((x, y) -> x < y, arrayPopBack(step_index), arrayPopFront(step_index)) AS steps_ordered "
             f"FROM {{db:Identifier}}.traces FINAL WHERE {where} ORDER BY offset LIMIT {{limit:UInt64}}")
    columns = f"offset, split, {_PARQUET_COLUMNS}" if fmt == PARQUET else f"offset, split, {_LINES[fmt]} AS line"
    return (f"SELECT {columns}, concat(json_head, json_middle, json_tail) AS canonical, steps_ordered, "
            f"NOT ({_SCORE_AS_PYTHON}) OR match(canonical, '{_ESCAPES_UNLIKE_PYTHON}') AS python_json "
            f"FROM ({inner}) ORDER BY offset {_SETTINGS}")


@dataclass
class ColumnPage:
    """One page of a partition's dataset records, in offset order."""

    topic: str
    partition: int
    table: pa.Table
    """The page's columns, one chunk."""
    records: list[dict] | None = None
    """Set when a row's steps are out of order: the dataset records of the page's offset span (not yet
    filtered), for the per-record path, which sorts them."""
    fixed: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    """Row number → (canonical JSON, JSON Lines line) made by Python, for the rows flagged ``python_json``."""

    def positions(self) -> tuple[tuple[int, int], tuple[int, int]]:
        offsets = self.table.column("offset")
        return (self.partition, offsets[0].as_py()), (self.partition, offsets[-1].as_py())

    def hashed(self) -> CanonicalLines:
        """What ``ContentHasher.add_lines`` takes: every row's canonical JSON and newline, in order."""
        first, last = self.positions()
        data = _joined(self.table.column("canonical"), {i: c for i, (c, _) in self.fixed.items()})
        return CanonicalLines(data, self.table.num_rows, first, last)

    def splits(self) -> dict[str, int]:
        """How many rows are in each split."""
        eval_rows = pc.sum(pc.equal(self.table.column("split"), "eval")).as_py() or 0
        return {"train": self.table.num_rows - eval_rows, "eval": eval_rows}

    def _in(self, split: str) -> pa.Table:
        table = self.table
        return table if split == "all" else table.filter(pc.equal(table.column("split"), split))

    def lines(self, split: str) -> tuple[bytes, int]:
        """The JSON Lines of the rows in ``split`` (``all``: every row), and how many."""
        if split == "all":
            table, fixed = self.table, {i: line for i, (_, line) in self.fixed.items()}
        else:
            keep = pc.equal(self.table.column("split"), split)
            rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
            renumber = {int(old): new for new, old in enumerate(rows)}
            table = self.table.filter(keep)
            fixed = {renumber[i]: line for i, (_, line) in self.fixed.items() if i in renumber}
        return _joined(table.column("line"), fixed), table.num_rows

    def parquet_batch(self, split: str) -> pa.RecordBatch:
        """The rows in ``split`` as a batch of the Parquet export's schema."""
        table = self._in(split)
        columns = [table.column("created_ms" if f.name == "created_at" else f.name).combine_chunks().cast(f.type)
                   for f in PARQUET_SCHEMA]
        return pa.RecordBatch.from_arrays(columns, schema=PARQUET_SCHEMA)


def _joined(strings: pa.ChunkedArray, fixed: dict[int, bytes]) -> bytes:
    """The values of a string column end to end, with the rows in ``fixed`` replaced."""
    parts: list[Any] = []
    row = 0
    for chunk in strings.chunks:
        _, offsets_buffer, data = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        start = 0
        for i in sorted(i for i in fixed if row <= i < row + len(chunk)):
            local = i - row
            parts.append(memoryview(data)[int(offsets[start]):int(offsets[local])])
            parts.append(fixed[i])
            start = local + 1
        if len(chunk):
            parts.append(memoryview(data)[int(offsets[start]):int(offsets[-1])])
        row += len(chunk)
    return b"".join(parts)


class ColumnPages:
    """The manifest's records from the warehouse, a page at a time, in (partition, offset) order."""

    def __init__(self, manifest: Manifest, fmt: str) -> None:
        conditions, self._params = filter_sql(manifest.filter)
        split, split_params = split_sql(manifest.split)
        self._params.update(split_params)
        self._sql = _page_sql(conditions, split, fmt)
        self._line = None if fmt == PARQUET else line_writer(fmt)
        self._pages: Iterator[ColumnPage] | None = None
        self._ranges = manifest.ranges

    def next(self, warehouse: Warehouse) -> ColumnPage | None:
        """The next page (None at the end)."""
        if self._pages is None:
            self._pages = (self._page(warehouse, r, table.combine_chunks()) for r, table in range_pages(
                warehouse, self._ranges, self._sql, self._params, most=PAGE_ROWS))
        return next(self._pages, None)

    def _page(self, warehouse: Warehouse, r: OffsetRange, table: pa.Table) -> ColumnPage:
        if not pc.all(table.column("steps_ordered").cast(pa.bool_())).as_py():
            offsets = table.column("offset")
            span = r._replace(start=offsets[0].as_py(), end=offsets[-1].as_py() + 1)
            records = [record for page in read_range_pages_from_warehouse(warehouse, [span]) for record in page]
            return ColumnPage(r.topic, r.partition, table, records)
        page = ColumnPage(r.topic, r.partition, table)
        flagged = np.flatnonzero(table.column("python_json").to_numpy())
        if len(flagged):
            offsets = table.column("offset").to_numpy()
            splits = table.column("split").to_pylist()
            wanted = [int(offsets[i]) for i in flagged]
            records = read_offsets_from_warehouse(warehouse, r.topic, r.partition, wanted)
            if [record["offset"] for record in records] != wanted:
                raise DatasetIntegrityError(
                    f"{r.topic}[{r.partition}]: rows at offsets {wanted} changed while they were read "
                    "(a rebuild?); export again")
            line = self._line
            for i, record in zip(flagged, records):
                c = canonical(record)
                page.fixed[int(i)] = (c.data + b"\n", line(splits[i], c) if line is not None else b"")
        return page
