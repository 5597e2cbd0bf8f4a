"""The plain JSON shape producers send (CLI ``publish``, HTTP ingest), checked by pydantic.

Only the shape is checked here; the trace rules (step counts, lengths…) are
``schemas.validation``'s, applied to every event in the validate stage, so a
JSON producer and an Avro producer meet exactly the same rules.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import InvalidTraceShape
from schemas.timeutil import utc_millis
from schemas.validation import CREATED_AT_MAX, CREATED_AT_MIN

# Avro "int" bounds; fastavro would write larger ints that other readers reject.
_INT32 = {"ge": -(2**31), "le": 2**31 - 1}


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    i: int = Field(**_INT32)
    type: str
    content: str


class TraceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trace_id: str | None = None
    trace_version: int = Field(default=1, **_INT32)
    prompt: str
    steps: list[StepIn]
    final_answer: str
    meta: dict[str, str] = {}
    source: str = "unknown"
    created_at: datetime | None = None
    score: float | None = None
    model: str | None = None

    @field_validator("created_at")
    @classmethod
    def _created_at_in_utc(cls, value: datetime | None) -> datetime | None:
        """In UTC (milliseconds); a time whose UTC instant no datetime holds is refused here, naming the field.

        ``9999-12-31T23:59:59-14:00`` is year 10000 in UTC and ``0001-01-01T00:00:00+14:00``
        is year 0: both parse, but converting them overflows. Times that convert are
        range-checked with the other trace rules (``created_at_out_of_range``).
        """
        if value is None:
            return None
        try:
            return utc_millis(value)
        except OverflowError:
            raise ValueError(
                f"{value.isoformat()} is outside {CREATED_AT_MIN.isoformat()}..{CREATED_AT_MAX.isoformat()} "
                "(what the warehouse's DateTime64 holds) once in UTC"
            ) from None

    def to_record(self, now: datetime) -> dict:
        """The Avro record for the latest Trace schema; a missing id/created_at is filled in."""
        return {
            "trace_id": self.trace_id if self.trace_id is not None else uuid.uuid4().hex,
            "trace_version": self.trace_version,
            "prompt": self.prompt,
            "steps": [{"i": s.i, "type": s.type, "content": s.content} for s in self.steps],
            "final_answer": self.final_answer,
            "meta": dict(self.meta),
            "source": self.source,
            "created_at": utc_millis(self.created_at if self.created_at is not None else now),
            "score": self.score,
            "model": self.model,
        }


def parse_trace_json(obj: dict, now: datetime) -> dict:
    """Check a decoded JSON object and return its Avro record, or raise InvalidTraceShape."""
    try:
        trace = TraceIn.model_validate(obj)
    except ValidationError as exc:
        problems = tuple(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        message = "invalid trace: " + "; ".join(problems)
        raise InvalidTraceShape(message.replace("\n", " "), problems) from None
    return trace.to_record(now)
