"""The trace rules, as plain Python on the decoded record.

This runs once per event in the validate stage, so it avoids pydantic and
stops at the first violation. A violation's ``reason`` is the dead-letter
code; its ``message`` names the field and the limit so a producer can fix it.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from operator import itemgetter

from schemas.timeutil import to_millis

MAX_STEPS = 1000
MAX_PROMPT_CHARS = 50_000
MAX_ANSWER_CHARS = 50_000
MAX_STEP_CHARS = 20_000
MAX_EVENT_BYTES = 1_048_576
# Avro "int" is 32-bit, but fastavro writes and reads larger Python ints
# without complaint; other Avro readers would then fail on the record, and so
# would the warehouse's Int32 columns.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
# What the warehouse's ``traces`` columns hold (warehouse/tables.py), so a
# trace that passes validate always materializes and both dataset read paths
# agree. schemas imports nothing of ours: tests/unit/test_schemas_validation.py
# checks these against the column types. Strings need no limit: ClickHouse
# String holds any bytes (NUL included), and Avro/JSON text is valid UTF-8.
WAREHOUSE_COLUMNS = {
    "trace_version": "Int32",
    "step_index": "Array(Int32)",
    "created_at": "DateTime64(3, 'UTC')",
    "score": "Nullable(Float64)",
}
# ClickHouse's documented DateTime64 range; outside it functions clamp or wrap.
CREATED_AT_MIN = datetime(1900, 1, 1, tzinfo=UTC)
CREATED_AT_MAX = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


class Reason(StrEnum):
    """Machine-readable dead-letter reason codes."""

    NOT_AVRO = "not_avro"
    UNKNOWN_SCHEMA = "unknown_schema"
    CORRUPT_AVRO = "corrupt_avro"
    EVENT_TOO_LARGE = "event_too_large"
    NO_STEPS = "no_steps"
    TOO_MANY_STEPS = "too_many_steps"
    DUPLICATE_STEP_INDEX = "duplicate_step_index"
    NEGATIVE_STEP_INDEX = "negative_step_index"
    STEP_INDEX_TOO_LARGE = "step_index_too_large"
    PROMPT_TOO_LONG = "prompt_too_long"
    ANSWER_TOO_LONG = "answer_too_long"
    STEP_TOO_LONG = "step_too_long"
    EMPTY_PROMPT = "empty_prompt"
    EMPTY_TRACE_ID = "empty_trace_id"
    EMPTY_STEP_TYPE = "empty_step_type"
    TRACE_VERSION_OUT_OF_RANGE = "trace_version_out_of_range"
    CREATED_AT_OUT_OF_RANGE = "created_at_out_of_range"
    SCORE_NOT_FINITE = "score_not_finite"
    NOT_JSON = "not_json"
    INVALID_SHAPE = "invalid_shape"
    WAREHOUSE_REJECTED = "warehouse_rejected"


@dataclass(frozen=True)
class Violation:
    reason: Reason
    message: str
    field: str = ""
    """The offending field's path in the trace (``steps.3.i``), for answers that name it."""


def check_event_size(n_bytes: int, limit: int = MAX_EVENT_BYTES) -> Violation | None:
    if n_bytes > limit:
        return Violation(
            Reason.EVENT_TOO_LARGE, f"event is {n_bytes:,} bytes; the limit is {limit:,}"
        )
    return None


def _too_long(reason: Reason, what: str, text: str, limit: int, field: str) -> Violation | None:
    if len(text) > limit:
        return Violation(reason, f"{what} is {len(text):,} chars; the limit is {limit:,}", field)
    return None


def _in_created_at_range(value: datetime | int) -> bool:
    """Whether a timestamp-millis value (aware or naive-UTC datetime, or epoch ms) fits the column."""
    if isinstance(value, datetime):
        value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return CREATED_AT_MIN <= value <= CREATED_AT_MAX
    return to_millis(CREATED_AT_MIN) <= value <= to_millis(CREATED_AT_MAX)


def check_trace(record: dict) -> Violation | None:
    """The first rule ``record`` breaks, or None. "Empty" includes whitespace-only."""
    if not record["trace_id"].strip():
        return Violation(Reason.EMPTY_TRACE_ID, "trace_id is empty; give every trace an id", "trace_id")
    prompt = record["prompt"]
    if not prompt.strip():
        return Violation(Reason.EMPTY_PROMPT, "prompt is empty", "prompt")
    v = _too_long(Reason.PROMPT_TOO_LONG, "prompt", prompt, MAX_PROMPT_CHARS, "prompt") or _too_long(
        Reason.ANSWER_TOO_LONG, "final_answer", record["final_answer"], MAX_ANSWER_CHARS, "final_answer"
    )
    if v:
        return v
    v = _check_columns(record)
    if v:
        return v
    steps = record["steps"]
    if not steps:
        return Violation(Reason.NO_STEPS, "trace has no steps; at least 1 is required", "steps")
    if len(steps) > MAX_STEPS:
        return Violation(
            Reason.TOO_MANY_STEPS, f"trace has {len(steps):,} steps; the limit is {MAX_STEPS:,}", "steps"
        )
    seen: set[int] = set()
    for n, step in enumerate(steps):
        i = step["i"]
        if i < 0:
            return Violation(
                Reason.NEGATIVE_STEP_INDEX, f"step {i} has a negative index; indices start at 0", f"steps.{n}.i"
            )
        if i > INT32_MAX:
            return Violation(
                Reason.STEP_INDEX_TOO_LARGE,
                f"step {i} index does not fit an Avro int; the limit is {INT32_MAX:,}",
                f"steps.{n}.i",
            )
        if i in seen:
            return Violation(
                Reason.DUPLICATE_STEP_INDEX, f"step index {i} appears more than once", f"steps.{n}.i"
            )
        seen.add(i)
        if not step["type"].strip():
            return Violation(Reason.EMPTY_STEP_TYPE, f"step {i} type is empty", f"steps.{n}.type")
        v = _too_long(
            Reason.STEP_TOO_LONG, f"step {i} content", step["content"], MAX_STEP_CHARS, f"steps.{n}.content"
        )
        if v:
            return v
    return None


def _check_columns(record: dict) -> Violation | None:
    """Scalar fields whose Avro type holds more than their warehouse column (WAREHOUSE_COLUMNS)."""
    version = record.get("trace_version", 1)
    if not INT32_MIN <= version <= INT32_MAX:
        return Violation(
            Reason.TRACE_VERSION_OUT_OF_RANGE,
            f"trace_version {version:,} does not fit a 32-bit int ({INT32_MIN:,}..{INT32_MAX:,})",
            "trace_version",
        )
    created_at = record["created_at"]
    if not _in_created_at_range(created_at):
        shown = created_at.isoformat() if isinstance(created_at, datetime) else f"{created_at:,} ms"
        return Violation(
            Reason.CREATED_AT_OUT_OF_RANGE,
            f"created_at {shown} is outside {CREATED_AT_MIN.isoformat()}.."
            f"{CREATED_AT_MAX.isoformat()} (what the warehouse's DateTime64 holds)",
            "created_at",
        )
    score = record.get("score")
    if score is not None and not math.isfinite(score):
        return Violation(
            Reason.SCORE_NOT_FINITE, f"score is {score}; give a finite number or none (JSON has no {score})", "score"
        )
    return None


@functools.cache
def _latest_trace_defaults() -> tuple[tuple[str, object], ...]:
    from schemas.contracts import TRACE  # contracts imports this module's Reason
    from schemas.registry import default_registry

    fields = default_registry().latest(TRACE).definition["fields"]
    return tuple((f["name"], f["default"]) for f in fields if "default" in f)


def normalize(record: dict) -> dict:
    """A new record for ``traces.valid``: steps sorted by ``i``, defaulted fields present.

    Text is NOT stripped or otherwise touched: exports must reproduce what the
    producer sent byte for byte (dataset hashes depend on it, and whitespace
    can matter, e.g. in code steps). Defaults come from the latest packaged
    Trace schema, so a record decoded from any version has every field.
    """
    out = dict(record)
    out["steps"] = sorted(record["steps"], key=itemgetter("i"))
    for name, default in _latest_trace_defaults():
        if name not in out:
            out[name] = copy.deepcopy(default)
    return out
