"""Read exact offset ranges from the warehouse: the same dataset records as replay gives.

Rows of ``traces FINAL`` are selected by their Kafka coordinates, page by
page (keyset on ``offset``, so memory stays bounded by ``batch_rows``),
through clickhouse-connect's Arrow API: nested columns become Python objects
in Arrow's C++ code rather than row by row. Each row becomes the dataset
record ``kafkalog.ranges`` builds from Kafka, equal field for field:

- ``steps`` from the parallel arrays ``step_index``/``step_type``/``step_content``
  (zipped in SQL into named tuples, so Arrow hands back ``{"i", "type", "content"}`` dicts);
- ``meta`` from the Map (Arrow gives (key, value) pairs; made a dict);
- ``created_at`` as a ``datetime`` in ``timezone.utc`` with millisecond
  precision, built from epoch milliseconds exactly as fastavro builds it
  (Arrow would give ``ZoneInfo("UTC")``, and the row API a naive datetime);
- ``score``/``model`` None for NULL.

Calls block: run them on the warehouse's own thread (``BatchWriter.run``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dataset.record_table import RECORD_SCHEMA
from kafkalog.ranges import ordered_ranges
from schemas.trace_fields import STEPS_SQL

if TYPE_CHECKING:
    from dataset.ranges import OffsetRange
    from warehouse.client import Warehouse

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RANGE_WHERE = (
    "topic = {topic:String} AND partition = {partition:UInt32} "
    "AND offset >= {start:UInt64} AND offset < {end:UInt64}"
)
"""The rows of one offset range; ``range_pages`` fills its parameters."""

_RECORD_COLUMNS = (
    f"offset, trace_id, trace_version, prompt, {STEPS_SQL} AS steps, "
    "final_answer, meta, source, toUnixTimestamp64Milli(created_at) AS created_ms, score, model"
)

_PAGE_SQL = (
    f"SELECT {_RECORD_COLUMNS} FROM {{db:Identifier}}.traces FINAL "
    f"WHERE {RANGE_WHERE} "
    "ORDER BY offset LIMIT {limit:UInt64}"
)

_TABLE_SQL = (
    f"SELECT trace_id, trace_version, prompt, {STEPS_SQL} AS steps, final_answer, meta, toString(source) AS source, "
    "created_at, score, model, toString(topic) AS topic, toInt32(partition) AS partition, toInt64(offset) AS offset "
    f"FROM {{db:Identifier}}.traces FINAL WHERE {RANGE_WHERE} ORDER BY offset LIMIT {{limit:UInt64}}"
)
"""A page of dataset records as ``dataset.record_table.RECORD_SCHEMA`` columns."""

_OFFSETS_SQL = (
    f"SELECT {_RECORD_COLUMNS} FROM {{db:Identifier}}.traces FINAL "
    "WHERE topic = {topic:String} AND partition = {partition:UInt32} AND offset IN {offsets:Array(UInt64)} "
    "ORDER BY offset"
)

_COUNT_SQL = f"SELECT count() FROM {{db:Identifier}}.traces FINAL WHERE {RANGE_WHERE}"


def _parameters(warehouse: Warehouse, r: OffsetRange) -> dict[str, Any]:
    return {"db": warehouse.database, "topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}


def _records(table: Any, topic: str, partition: int) -> list[dict]:
    """Dataset records of one page, column by column into Python, then row by row into dicts."""
    col = table.column
    offsets = col("offset").to_pylist()
    trace_ids = col("trace_id").to_pylist()
    trace_versions = col("trace_version").to_pylist()
    prompts = col("prompt").to_pylist()
    steps = col("steps").to_pylist()
    answers = col("final_answer").to_pylist()
    metas = col("meta").to_pylist()  # [(key, value), ...] per row; maps_as_pydicts is ~10x slower
    sources = col("source").to_pylist()
    created = col("created_ms").to_pylist()
    scores = col("score").to_pylist()
    models = col("model").to_pylist()
    epoch, ms = _EPOCH, timedelta(milliseconds=1)
    return [
        {
            "trace_id": trace_id,
            "trace_version": trace_version,
            "prompt": prompt,
            "steps": step_list,
            "final_answer": answer,
            "meta": dict(meta),
            "source": source,
            "created_at": epoch + created_ms * ms,
            "score": score,
            "model": model,
            "topic": topic,
            "partition": partition,
            "offset": offset,
        }
        for offset, trace_id, trace_version, prompt, step_list, answer, meta, source, created_ms, score, model in zip(
            offsets, trace_ids, trace_versions, prompts, steps, answers, metas, sources, created, scores, models
        )
    ]


PAGE_BYTES = 64 << 20
"""About how much one page's Arrow table may take: traces run up to 1 MB each (an Arrow string column
stops at 2 GB), so a page holds fewer rows when they are big. The first page reads ``FIRST_PAGE_ROWS``."""
FIRST_PAGE_ROWS = 256


def _next_page_rows(table: Any, most: int) -> int:
    """Rows for the page after ``table``: as many as fit ``PAGE_BYTES`` at its rows' size, at most ``most``."""
    return max(1, min(most, PAGE_BYTES * table.num_rows // max(1, table.nbytes)))


def range_pages(
    warehouse: Warehouse, ranges: Sequence[OffsetRange], sql: str, params: dict[str, Any], *, most: int
) -> Iterator[tuple[OffsetRange, Any]]:
    """``(range, Arrow table)`` pages of ``sql`` over ``ranges``, in (partition, offset) order.

    ``sql`` selects ``offset`` from rows meeting ``RANGE_WHERE`` in ``ORDER BY offset LIMIT {limit:UInt64}``;
    pages go on from the last offset read (keyset), at most ``most`` rows and about ``PAGE_BYTES`` each.
    """
    rows = min(FIRST_PAGE_ROWS, most)
    for r in ordered_ranges(ranges):
        cursor = r.start
        while cursor < r.end:
            limit = rows
            table = warehouse.query_arrow(sql, {**params, **_parameters(warehouse, r), "start": cursor, "limit": limit})
            if table.num_rows == 0:
                break
            rows = _next_page_rows(table, most)
            yield r, table
            if table.num_rows < limit:
                break
            cursor = table.column("offset")[-1].as_py() + 1


def read_range_pages_from_warehouse(
    warehouse: Warehouse, ranges: Sequence[OffsetRange], *, batch_rows: int = 10000
) -> Iterator[list[dict]]:
    """Like ``read_ranges_from_warehouse``, a page (at most ``batch_rows`` records, ~``PAGE_BYTES``) at a time."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    for r, table in range_pages(warehouse, ranges, _PAGE_SQL, {}, most=batch_rows):
        yield _records(table, r.topic, r.partition)


def read_range_tables_from_warehouse(
    warehouse: Warehouse, ranges: Sequence[OffsetRange], *, batch_rows: int = 10000
) -> Iterator[Any]:
    """Like ``read_range_pages_from_warehouse``, each page a table of ``RECORD_SCHEMA`` (no Python object per row)."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    for _, table in range_pages(warehouse, ranges, _TABLE_SQL, {}, most=batch_rows):
        yield table.cast(RECORD_SCHEMA)


def read_offsets_from_warehouse(warehouse: Warehouse, topic: str, partition: int, offsets: Sequence[int]) -> list[dict]:
    """The dataset records at these offsets of one partition, in offset order (an offset without a row: none)."""
    parameters = {"db": warehouse.database, "topic": topic, "partition": partition, "offsets": list(offsets)}
    return _records(warehouse.query_arrow(_OFFSETS_SQL, parameters), topic, partition)


def read_ranges_from_warehouse(
    warehouse: Warehouse, ranges: Sequence[OffsetRange], *, batch_rows: int = 10000
) -> Iterator[dict]:
    """Dataset records of the ``traces`` rows in ``ranges``, in (partition, offset) order.

    The same records, in the same order, as ``kafkalog.ranges.read_ranges``
    gives for ranges the materializer has written. An offset without a row
    is skipped silently: it may be a gap in the log (transaction markers), or
    not written yet; compare ``count_rows`` with the manifest's count to tell.

    Raises:
        WarehouseUnavailable / WarehouseRejected: the query failed.
        ValueError: malformed or overlapping ranges.
    """
    for page in read_range_pages_from_warehouse(warehouse, ranges, batch_rows=batch_rows):
        yield from page


def count_rows(warehouse: Warehouse, ranges: Sequence[OffsetRange]) -> int:
    """How many ``traces`` rows (deduplicated, FINAL) fall within ``ranges``."""
    total = 0
    for r in ordered_ranges(ranges):
        if r.end > r.start:
            table = warehouse.query_arrow(_COUNT_SQL, _parameters(warehouse, r))
            total += table.column(0)[0].as_py()
    return total
