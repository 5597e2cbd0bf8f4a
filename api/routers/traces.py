"""GET /api/traces (keyset pages), /api/traces/compare, /api/traces/{trace_id}."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import Field

from api.cursor import Cursor, Order, decode_cursor
from api.deps import Readable, ReaderDep, StateDep, json_response
from api.errors import ERROR_SCHEMA, InvalidRequest, NotFound
from api.models import Trace, TraceComparison, TracePage
from api.queries import traces as q
from api.readahead import ReadAhead
from api.reader import WarehouseReader
from dataset.filter import TraceFilter
from schemas.errors import InvalidDatasetRequest
from schemas.validation import CREATED_AT_MAX, CREATED_AT_MIN

router = APIRouter(prefix="/api/traces", tags=["traces"], dependencies=[Readable])

MAX_LIMIT = 500
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 404, 422)}


def parse_meta(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """``key=value`` strings as pairs; anything else is the caller's mistake."""
    out = []
    for n, pair in enumerate(pairs):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest(
                f"meta filter {pair!r} is not key=value; write e.g. meta=lang=en",
                [{"field": f"query.meta.{n}", "message": "expected key=value"}],
            )
        out.append((key, value))
    return tuple(out)


def check_instant(name: str, value: datetime | None) -> datetime | None:
    """An instant the warehouse's created_at column can hold (DateTime64's range), else a 422 naming it."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not CREATED_AT_MIN <= aware <= CREATED_AT_MAX:
        raise InvalidRequest(
            f"{name}={value.isoformat()} is outside what traces can hold ({CREATED_AT_MIN.isoformat()} to "
            f"{CREATED_AT_MAX.isoformat()})",
            [{"field": f"query.{name}", "message": "outside the range of created_at"}],
        )
    return value


WALK_RULE = (
    "Pages of one walk never repeat a trace, and every trace present when the walk began (its first page) "
    "is served exactly once. The cursor holds a position per partition of the topic, and each partition "
    "is read in offset order from its own position. Traces that arrive during a walk: with `order=asc`, "
    "a trace that lands in any partition before the walk ends is served exactly once, in its partition's "
    "offset order; with `order=desc`, the first page pins each partition at its newest trace, so later "
    "arrivals are never served in that walk (start a new walk, without a cursor, to see them). A walk ends when "
    "`next_cursor` is null: the page came back with fewer than `limit` items."
)


@router.get("", response_model=TracePage, responses=_ERRORS, summary="List traces, a page at a time",
            description=f"Traces without step bodies, newest first (`order=desc`) or oldest first (`order=asc`, "
                        f"the default), by the time the warehouse stored them.\n\n{WALK_RULE}")
async def list_traces(
    reader: ReaderDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page, at most 500.")] = 100,
    cursor: Annotated[str | None, Query(
        description="next_cursor of the previous page, with the same order; none for the first.")] = None,
    order: Annotated[Order, Query(description="asc: oldest first; desc: newest first.")] = Order.ASC,
    source: Annotated[list[str], Query(description="Keep traces from any of these sources.")] = [],  # noqa: B006
    trace_version: Annotated[list[Int32], Query(description="Keep these versions.")] = [],  # noqa: B006
    meta: Annotated[list[str], Query(description="key=value that meta must hold; repeat for several.",
                                     examples=["lang=en"])] = [],  # noqa: B006
    created_from: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    created_until: Annotated[datetime | None, Query(description="Created before (ISO 8601).")] = None,
) -> Response:
    """A page of traces in the walk's order (``WALK_RULE`` says what a walk serves)."""
    where = list_filter(source, trace_version, meta, created_from, created_until)
    after = decode_cursor(cursor, order)
    return json_response(await read_page(state.pages, state.topics.valid, after, limit, where))


def list_filter(source: list[str], trace_version: list[int], meta: list[str], created_from: datetime | None,
                created_until: datetime | None) -> TraceFilter:
    """The list's query as the one trace filter (``dataset.filter``, as datasets use); what it refuses is a 422."""
    def utc(value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)

    try:
        return TraceFilter(tuple(source), tuple(trace_version), parse_meta(meta),
                           utc(check_instant("created_from", created_from)),
                           utc(check_instant("created_until", created_until)))
    except InvalidDatasetRequest as exc:
        raise InvalidRequest(f"{exc}", [{"field": "query", "message": str(exc)}]) from exc


async def read_page(pages: ReadAhead, topic: str, after: Cursor, limit: int, where: TraceFilter) -> bytes:
    """One page's JSON (``api.fastlane`` serves unfiltered pages through here too)."""
    return await pages.page_body(
        ("traces", topic, where, after.order), after, limit, lambda w, start, n: q.list_page(w, topic, start, n, where))


async def read_trace(reader: WarehouseReader, trace_id: str) -> bytes:
    """One trace's JSON line, or b'' when there is none: from the trace index when it holds it."""
    index = reader.trace_index
    if index is not None and (row := index.get(trace_id)) is not None:
        return row
    return await reader.cached(("trace", trace_id), lambda w: q.by_id(w, trace_id))


def _not_found(trace_id: str, field: str) -> NotFound:
    return NotFound(
        f"no trace with trace_id {trace_id!r} in the warehouse; it may not be materialized yet, "
        "or it was dead-lettered (GET /api/dlq)",
        [{"field": field, "message": "unknown trace_id"}],
    )


def _trace_or_404(row: bytes, trace_id: str, field: str) -> dict:
    if not row:
        raise _not_found(trace_id, field)
    return json.loads(row)


@router.get("/compare", response_model=TraceComparison, responses=_ERRORS, summary="Two traces side by side")
async def compare_traces(
    reader: ReaderDep,
    a: Annotated[str, Query(min_length=1, description="trace_id of the first trace.")],
    b: Annotated[str, Query(min_length=1, description="trace_id of the second trace.")],
) -> Response:
    """Both traces whole, the fields that differ, and their steps aligned by index."""
    row_a, row_b = await reader.run(lambda w: (q.by_id(w, a), q.by_id(w, b)))
    ta, tb = _trace_or_404(row_a, a, "query.a"), _trace_or_404(row_b, b, "query.b")
    steps_a, steps_b = {s["i"]: s for s in ta["steps"]}, {s["i"]: s for s in tb["steps"]}
    pairs = [
        {"i": i, "a": steps_a.get(i), "b": steps_b.get(i), "same": steps_a.get(i) == steps_b.get(i)}
        for i in sorted(steps_a.keys() | steps_b.keys())
    ]
    differing = sorted(k for k in ta if k not in ("steps",) and ta[k] != tb.get(k))
    return json_response(json.dumps({"a": ta, "b": tb, "differing_fields": differing, "steps": pairs}).encode())


@router.get("/{trace_id}", response_model=Trace, responses=_ERRORS, summary="One trace, whole")
async def get_trace(
    reader: ReaderDep,
    trace_id: Annotated[str, Path(min_length=1, description="The trace's id.")],
) -> Response:
    """The whole trace (steps in order, with their types) and its topic/partition/offset."""
    row = await read_trace(reader, trace_id)
    if not row:
        raise _not_found(trace_id, "path.trace_id")
    return json_response(row.rstrip(b"\n"))
