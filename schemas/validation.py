"""The trace rules, as plain Python on the decoded record.

This runs once per event in the validate stage, so it avoids pydantic and
stops at the first violation. A violation's ``reason`` is the dead-letter
code; its ``message`` names the field and the limit so a producer can fix it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter

MAX_STEPS = 1000
MAX_PROMPT_CHARS = 50_000
MAX_ANSWER_CHARS = 50_000
MAX_STEP_CHARS = 20_000
MAX_EVENT_BYTES = 1_048_576
# Avro "int" is 32-bit, but fastavro writes and reads larger Python ints
# without complaint; other Avro readers would then fail on the record.
INT32_MAX = 2**31 - 1


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
    NOT_JSON = "not_json"
    INVALID_SHAPE = "invalid_shape"
    WAREHOUSE_REJECTED = "warehouse_rejected"


@dataclass(frozen=True)
class Violation:
    reason: Reason
    message: str


def check_event_size(n_bytes: int, limit: int = MAX_EVENT_BYTES) -> Violation | None:
    if n_bytes > limit:
        return Violation(
            Reason.EVENT_TOO_LARGE, f"event is {n_bytes:,} bytes; the limit is {limit:,}"
        )
    return None


def _too_long(reason: Reason, what: str, text: str, limit: int) -> Violation | None:
    if len(text) > limit:
        return Violation(reason, f"{what} is {len(text):,} chars; the limit is {limit:,}")
    return None


def check_trace(record: dict) -> Violation | None:
    """The first rule ``record`` breaks, or None. "Empty" includes whitespace-only."""
    if not record["trace_id"].strip():
        return Violation(Reason.EMPTY_TRACE_ID, "trace_id is empty; give every trace an id")
    prompt = record["prompt"]
    if not prompt.strip():
        return Violation(Reason.EMPTY_PROMPT, "prompt is empty")
    v = _too_long(Reason.PROMPT_TOO_LONG, "prompt", prompt, MAX_PROMPT_CHARS) or _too_long(
        Reason.ANSWER_TOO_LONG, "final_answer", record["final_answer"], MAX_ANSWER_CHARS
    )
    if v:
        return v
    steps = record["steps"]
    if not steps:
        return Violation(Reason.NO_STEPS, "trace has no steps; at least 1 is required")
    if len(steps) > MAX_STEPS:
        return Violation(
            Reason.TOO_MANY_STEPS, f"trace has {len(steps):,} steps; the limit is {MAX_STEPS:,}"
        )
    seen: set[int] = set()
    for step in steps:
        i = step["i"]
        if i < 0:
            return Violation(
                Reason.NEGATIVE_STEP_INDEX, f"step {i} has a negative index; indices start at 0"
            )
        if i > INT32_MAX:
            return Violation(
                Reason.STEP_INDEX_TOO_LARGE,
                f"step {i} index does not fit an Avro int; the limit is {INT32_MAX:,}",
            )
        if i in seen:
            return Violation(
                Reason.DUPLICATE_STEP_INDEX, f"step index {i} appears more than once"
            )
        seen.add(i)
        if not step["type"].strip():
            return Violation(Reason.EMPTY_STEP_TYPE, f"step {i} type is empty")
        v = _too_long(Reason.STEP_TOO_LONG, f"step {i} content", step["content"], MAX_STEP_CHARS)
        if v:
            return v
    return None


@functools.cache
def _latest_trace_defaults() -> tuple[tuple[str, object], ...]:
    from schemas.registry import default_registry

    fields = default_registry().latest("Trace").definition["fields"]
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
