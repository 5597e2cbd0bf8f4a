"""POST /api/traces and /api/traces/batch: the HTTP door to traces.raw.

A batch is checked whole before anything is published: shape (pydantic),
the trace rules (``schemas.validation``), the Avro encoding and the event
size. One bad item refuses the batch, and the answer names its index and
field, so nothing is half-published. 202 means Kafka acknowledged every
event (acks=all); the validate stage then treats them like any producer's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from api.deps import Ingestible, PublisherDep, SettingsDep, StateDep, json_response
from api.errors import ERROR_SCHEMA, InvalidRequest, PayloadTooLarge, Unavailable
from api.models import Accepted
from deploy.settings import Settings
from schemas.errors import EncodeError
from schemas.models import TraceIn
from schemas.validation import check_trace

router = APIRouter(prefix="/api/traces", tags=["ingest"], dependencies=[Ingestible])

MAX_BATCH = 1000
_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 413, 422, 503)}

_EXAMPLE = {
    "trace_id": "3f2a9c4e8b1d4e6f9a7c2b5d8e1f0a3c", "prompt": "What is 17 * 23?",
    "steps": [{"i": 0, "type": "thought", "content": "17 * 20 = 340, 17 * 3 = 51"},
              {"i": 1, "type": "check", "content": "340 + 51 = 391"}],
    "final_answer": "391", "meta": {"lang": "en"}, "source": "gsm8k",
}


def _encode(publisher, settings: Settings, traces: list[TraceIn], *, batch: bool) -> list[tuple[bytes, bytes]]:
    """Every trace as (key, Avro bytes), or the error naming the first bad one."""
    now = datetime.now(UTC)
    events = []
    for n, trace in enumerate(traces):
        where = f"item {n}" if batch else "the trace"
        field = f"body.{n}" if batch else "body"
        record = trace.to_record(now)
        violation = check_trace(record)
        if violation is not None:
            raise InvalidRequest(
                f"{where} breaks a trace rule ({violation.reason.value}): {violation.message}"
                + ("; nothing in the batch was published" if batch else ""),
                [{"field": f"{field}.{violation.field}" if violation.field else field,
                  "message": violation.message, "reason": violation.reason.value}],
            )
        try:
            payload = publisher.producer.encode(record)
        except EncodeError as exc:
            raise InvalidRequest(f"{where} does not fit the Trace schema: {exc}",
                                 [{"field": field, "message": str(exc)}]) from exc
        if len(payload) > settings.max_event_bytes:
            raise PayloadTooLarge(
                f"{where} ({record['trace_id']}) is {len(payload):,} bytes as an event; the limit is "
                f"{settings.max_event_bytes:,}" + ("; nothing in the batch was published" if batch else ""),
                [{"field": field, "message": "event too large", "bytes": len(payload)}],
            )
        events.append((record["trace_id"].encode(), payload))
    return events


async def _publish(state, publisher, events: list[tuple[bytes, bytes]]) -> Response:
    report = await publisher.publish(events)
    state.metrics.accepted.inc(report.delivered)
    ids = [key.decode() for key, _ in events]
    if report.failed:
        failed = {f.key.decode() for f in report.errors if f.key is not None}
        state.metrics.refused.labels("503").inc(report.failed)
        raise Unavailable(
            f"Kafka did not acknowledge {report.failed} of {len(events)} traces; publish those again "
            f"(the others are in {publisher.producer.topic})",
            [{"trace_id": i, "message": "not acknowledged"} for i in ids if i in failed],
        )
    body = Accepted(accepted=len(ids), trace_ids=ids, topic=publisher.producer.topic)
    return json_response(body.model_dump_json().encode(), status=202)


@router.post("", status_code=202, response_model=Accepted, responses=_ERRORS, summary="Publish one trace")
async def publish_trace(
    state: StateDep, settings: SettingsDep, publisher: PublisherDep,
    trace: Annotated[TraceIn, Body(examples=[_EXAMPLE])],
) -> Response:
    """Validate one trace and publish it to traces.raw; 202 once Kafka has it."""
    return await _publish(state, publisher, _encode(publisher, settings, [trace], batch=False))


_BATCH = TypeAdapter(Annotated[list[TraceIn], Field(min_length=1, max_length=MAX_BATCH)])


def parse_batch(body: bytes) -> list[TraceIn]:
    """The batch, parsed and checked straight from the bytes (pydantic's JSON parser, one pass).

    Raises:
        RequestValidationError: with ``body.N.field`` locations, answered like FastAPI's own.
    """
    try:
        return _BATCH.validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False, include_context=False)]
        ) from None


@router.post(
    "/batch", status_code=202, response_model=Accepted, responses=_ERRORS, summary="Publish up to 1000 traces, all or none",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/TraceIn"}, "minItems": 1,
                   "maxItems": MAX_BATCH},
        "examples": {"two steps": {"value": [_EXAMPLE]}}}}}},
)
async def publish_batch(state: StateDep, settings: SettingsDep, publisher: PublisherDep, request: Request) -> Response:
    """Validate every trace, then publish them all to traces.raw; one bad trace refuses the batch."""
    traces = parse_batch(await request.body())
    return await _publish(state, publisher, _encode(publisher, settings, traces, batch=True))
