"""GET /api/dlq: dead letters with their reason codes, a page at a time, and counts by reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.cursor import Order, decode_cursor
from api.deps import Readable, ReaderDep, StateDep, json_response
from api.errors import ERROR_SCHEMA
from api.models import DeadLetterPage
from api.queries import dlq as q
from api.queries.jsonrows import rows_array
from api.readahead import page_json

router = APIRouter(prefix="/api/dlq", tags=["dead letters"], dependencies=[Readable])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 422)}


@router.get("", response_model=DeadLetterPage, responses=_ERRORS, summary="Dead letters and counts by reason")
async def list_dead_letters(
    reader: ReaderDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page, at most 500.")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page, with the same order.")] = None,
    order: Annotated[Order, Query(description="asc: oldest first; desc: newest first.")] = Order.ASC,
    reason: Annotated[list[str], Query(description="Keep these reason codes, e.g. no_steps.")] = [],  # noqa: B006
    stage: Annotated[list[str], Query(description="Keep these stages: validate, materialize.")] = [],  # noqa: B006
) -> Response:
    """Dead letters (the original bytes left out), and how many there are by stage and reason.

    Pages walk as ``GET /api/traces`` does (the same cursors, the same rule for letters that arrive).
    """
    after = decode_cursor(cursor, order)
    reasons, stages, topic = tuple(reason), tuple(stage), state.topics.dlq

    def read(w) -> bytes:
        lines, next_cursor = q.list_page(w, topic, after, limit, reasons, stages).page(after, limit)
        return page_json(lines, next_cursor, limit)[:-1] + b',"counts":' + rows_array(q.counts(w, stages)) + b"}"

    return json_response(await reader.cached(("dlq", topic, after, limit, reasons, stages), read))
