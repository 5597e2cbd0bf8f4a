"""POST /api/traces and /api/traces/batch: the HTTP door to traces.raw.

A batch is checked whole before anything is published: shape (pydantic),
the trace rules, the Avro encoding and the event size, as the HTTP door's
line of ``ingest.policy`` says. One bad item refuses the batch, and the
answer names its index and field, so nothing is half-published. 202 means
Kafka acknowledged every event of this request (acks=all); concurrent
requests share the producer's batches, and each waits for its own events
only (``ingest.publisher``). The validate stage then treats them like any
producer's.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from aiokafka.errors import MessageSizeTooLargeError
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from api.deps import (
    ApiState,
    Ingestible,
    PublisherDep,
    SettingsDep,
    StateDep,
    json_response,
    publisher_of,
)
from api.errors import ERROR_SCHEMA, InvalidRequest, PayloadTooLarge, Unavailable
from api.models import Accepted
from deploy.settings import Settings
from ingest.policy import MAX_HTTP_BATCH, Door, rule_refusal, size_refusal
from schemas.errors import EncodeError
from schemas.models import TraceIn


def _json_int(digits: str) -> int | float:
    """A JSON integer; one too long for ``int()`` (over 4,300 digits) is ±inf, like ``1e400``.

    Such a number would otherwise refuse the whole body without naming its
    field; as an infinity, the field's own validation refuses it with a 422 naming it.
    """
    try:
        return int(digits)
    except ValueError:
        return -math.inf if digits.startswith("-") else math.inf


def _parse(adapter: TypeAdapter, body: bytes) -> Any:
    """The body, parsed and checked straight from the bytes (pydantic's JSON parser, one pass).

    Raises:
        RequestValidationError: with ``body.field`` (``body.N.field`` in a batch) locations,
            answered like FastAPI's own.
    """
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
    if any(err["type"] == "json_invalid" for err in errors):
        # pydantic's parser refuses a number beyond ~4,300 digits without naming its field;
        # the standard library's, with huge integers as ±inf, lets the field's check name it.
        try:
            return adapter.validate_python(json.loads(body, parse_int=_json_int))
        except ValueError as exc:  # json.JSONDecodeError, or pydantic's ValidationError
            if isinstance(exc, ValidationError):
                errors = exc.errors(include_url=False, include_context=False)
    raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline_refs(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline_refs(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline_refs(value, defs) for value in schema]
    return schema


def _trace_schema() -> dict[str, Any]:
    """TraceIn's JSON schema with its definitions inlined: the doors read their bodies themselves."""
    schema = TraceIn.model_json_schema()
    return _inline_refs(schema, schema.pop("$defs", {}))


router = APIRouter(prefix="/api/traces", tags=["ingest"], dependencies=[Ingestible])

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
        violation = rule_refusal(Door.HTTP, record)
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
        if size_refusal(Door.HTTP, len(payload), settings) is not None:
            raise PayloadTooLarge(
                f"{where} ({record['trace_id']}) is {len(payload):,} bytes as an event; the limit is "
                f"{settings.max_event_bytes:,}" + ("; nothing in the batch was published" if batch else ""),
                [{"field": field, "message": "event too large", "bytes": len(payload)}],
            )
        events.append((record["trace_id"].encode(), payload))
    return events


async def _publish(state, publisher, events: list[tuple[bytes, bytes]]) -> Response:
    """202 once Kafka acknowledged every one of ``events``; else the error naming the traces it did not take."""
    report = await publisher.publish(events)
    state.metrics.accepted.inc(report.delivered)
    ids = [key.decode() for key, _ in events]
    if report.failed:
        topic = publisher.producer.topic
        others = f" (the other {report.delivered} are in {topic})" if report.delivered else ""
        details = [{"trace_id": f.key.decode(), "message": f"not acknowledged: {type(f.error).__name__}: {f.error}"}
                   for f in report.errors if f.key is not None]
        if all(isinstance(f.error, MessageSizeTooLargeError) for f in report.errors):
            # Retrying cannot help: the topic's max.message.bytes is below the door's own event limit.
            state.metrics.refused.labels("413").inc(report.failed)
            raise PayloadTooLarge(
                f"{topic} does not take {report.failed} of {len(events)} traces: {report.errors[0].error}; "
                f"send smaller traces, or raise the topic's max.message.bytes to the API's max_event_bytes{others}",
                details,
            )
        state.metrics.refused.labels("503").inc(report.failed)
        raise Unavailable(
            f"Kafka did not acknowledge {report.failed} of {len(events)} traces "
            f"({type(report.errors[0].error).__name__}: {report.errors[0].error}); publish those again{others}",
            details,
        )
    body = Accepted.model_construct(accepted=len(ids), trace_ids=ids, topic=publisher.producer.topic)
    return json_response(body.model_dump_json().encode(), status=202)


_TRACE = TypeAdapter(TraceIn)
_TRACE_SCHEMA = _trace_schema()


@router.post(
    "", status_code=202, response_model=Accepted, responses=_ERRORS, summary="Publish one trace",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": _TRACE_SCHEMA, "examples": {"two steps": {"value": _EXAMPLE}}}}}},
)
async def publish_trace(request: Request) -> Response:
    """Validate one trace and publish it to traces.raw; 202 once Kafka has it."""
    return await publish_one(request.app.state.api, await request.body())


async def publish_one(state: ApiState, body: bytes) -> Response:
    """The single-trace door from its body on (``api.fastlane`` calls it too, past the same token check).

    It solves no dependency and parses the body itself, in one pass of pydantic's JSON parser:
    each costs more than the rest of the request.
    """
    publisher = publisher_of(state)
    trace = _parse(_TRACE, body)
    return await _publish(state, publisher, _encode(publisher, state.settings, [trace], batch=False))


_BATCH = TypeAdapter(Annotated[list[TraceIn], Field(min_length=1, max_length=MAX_HTTP_BATCH)])


def parse_batch(body: bytes) -> list[TraceIn]:
    """The batch, parsed and checked straight from the bytes; errors are located ``body.N.field``."""
    return _parse(_BATCH, body)


@router.post(
    "/batch", status_code=202, response_model=Accepted, responses=_ERRORS, summary="Publish up to 1000 traces, all or none",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "array", "items": _TRACE_SCHEMA, "minItems": 1,
                   "maxItems": MAX_HTTP_BATCH},
        "examples": {"two steps": {"value": [_EXAMPLE]}}}}}},
)
async def publish_batch(state: StateDep, settings: SettingsDep, publisher: PublisherDep, request: Request) -> Response:
    """Validate every trace, then publish them all to traces.raw; one bad trace refuses the batch."""
    traces = parse_batch(await request.body())
    return await _publish(state, publisher, _encode(publisher, settings, traces, batch=True))
