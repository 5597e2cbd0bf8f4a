"""Trace rules: each limit passes at the limit and fails just over it, with a useful message."""

from datetime import datetime, timezone

import pytest

from schemas.validation import (
    MAX_ANSWER_CHARS,
    MAX_EVENT_BYTES,
    MAX_PROMPT_CHARS,
    MAX_STEP_CHARS,
    MAX_STEPS,
    Reason,
    Violation,
    check_event_size,
    check_trace,
    normalize,
)

pytestmark = pytest.mark.unit


def trace(**overrides):
    record = {
        "trace_id": "t-1",
        "trace_version": 1,
        "prompt": "What is 2+2?",
        "steps": [{"i": 0, "type": "thought", "content": "add"}],
        "final_answer": "4",
        "meta": {},
        "source": "unit-test",
        "created_at": datetime(2024, 1, 1, tzinfo=timezone.utc),
        "score": None,
        "model": None,
    }
    record.update(overrides)
    return record


def steps(n, content="x", start=0):
    return [{"i": start + k, "type": "thought", "content": content} for k in range(n)]


def test_constants():
    assert (MAX_STEPS, MAX_PROMPT_CHARS, MAX_ANSWER_CHARS, MAX_STEP_CHARS, MAX_EVENT_BYTES) == (
        1000, 50_000, 50_000, 20_000, 1_048_576,
    )


def test_valid_trace():
    assert check_trace(trace()) is None


def test_event_size():
    assert check_event_size(MAX_EVENT_BYTES) is None
    v = check_event_size(MAX_EVENT_BYTES + 1)
    assert v == Violation(Reason.EVENT_TOO_LARGE, "event is 1,048,577 bytes; the limit is 1,048,576")
    assert check_event_size(11, limit=10).reason == Reason.EVENT_TOO_LARGE


@pytest.mark.parametrize(
    ("field", "limit", "reason"),
    [
        ("prompt", MAX_PROMPT_CHARS, Reason.PROMPT_TOO_LONG),
        ("final_answer", MAX_ANSWER_CHARS, Reason.ANSWER_TOO_LONG),
    ],
)
def test_text_limits(field, limit, reason):
    assert check_trace(trace(**{field: "é" * limit})) is None  # chars, not bytes
    v = check_trace(trace(**{field: "a" * (limit + 1)}))
    assert v.reason == reason
    assert v.message == f"{field} is {limit + 1:,} chars; the limit is {limit:,}"


def test_step_content_limit():
    assert check_trace(trace(steps=steps(4, "x" * MAX_STEP_CHARS))) is None
    long_step = steps(4)
    long_step[3]["content"] = "x" * 25_012
    v = check_trace(trace(steps=long_step))
    assert v == Violation(Reason.STEP_TOO_LONG, "step 3 content is 25,012 chars; the limit is 20,000")
    long_step[3]["content"] = "x" * (MAX_STEP_CHARS + 1)
    assert check_trace(trace(steps=long_step)).reason == Reason.STEP_TOO_LONG


def test_step_count_limits():
    assert check_trace(trace(steps=steps(1))) is None
    assert check_trace(trace(steps=steps(MAX_STEPS))) is None
    v = check_trace(trace(steps=steps(MAX_STEPS + 1)))
    assert v == Violation(Reason.TOO_MANY_STEPS, "trace has 1,001 steps; the limit is 1,000")
    assert check_trace(trace(steps=[])).reason == Reason.NO_STEPS


def test_step_indices():
    assert check_trace(trace(steps=steps(2, start=0))) is None
    assert check_trace(trace(steps=[{"i": 2**31 - 1, "type": "t", "content": ""}])) is None
    gaps_and_order = [{"i": 7, "type": "t", "content": ""}, {"i": 2, "type": "t", "content": ""}]
    assert check_trace(trace(steps=gaps_and_order)) is None

    v = check_trace(trace(steps=steps(2, start=-1)))
    assert v.reason == Reason.NEGATIVE_STEP_INDEX and "step -1" in v.message

    dup = steps(3) + [{"i": 1, "type": "t", "content": ""}]
    v = check_trace(trace(steps=dup))
    assert v.reason == Reason.DUPLICATE_STEP_INDEX and "index 1" in v.message

    v = check_trace(trace(steps=[{"i": 2**31, "type": "t", "content": ""}]))
    assert v.reason == Reason.STEP_INDEX_TOO_LARGE


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"trace_id": ""}, Reason.EMPTY_TRACE_ID),
        ({"trace_id": "  "}, Reason.EMPTY_TRACE_ID),
        ({"prompt": ""}, Reason.EMPTY_PROMPT),
        ({"prompt": "\n\t"}, Reason.EMPTY_PROMPT),
        ({"steps": [{"i": 0, "type": "", "content": "x"}]}, Reason.EMPTY_STEP_TYPE),
        ({"steps": [{"i": 0, "type": " ", "content": "x"}]}, Reason.EMPTY_STEP_TYPE),
    ],
)
def test_empty_fields(overrides, reason):
    assert check_trace(trace(**overrides)).reason == reason


def test_empty_answer_and_step_content_are_allowed():
    assert check_trace(trace(final_answer="", steps=[{"i": 0, "type": "t", "content": ""}])) is None


def test_reason_codes():
    assert Reason.NOT_AVRO == "not_avro"
    assert {r.value for r in Reason} >= {
        "not_avro", "unknown_schema", "corrupt_avro", "event_too_large", "no_steps",
        "too_many_steps", "duplicate_step_index", "negative_step_index", "prompt_too_long",
        "answer_too_long", "step_too_long", "empty_prompt", "empty_trace_id",
        "empty_step_type", "not_json", "invalid_shape", "warehouse_rejected",
    }


def test_normalize_sorts_steps_and_keeps_text():
    record = trace(
        prompt="  spaced prompt \n",
        steps=[
            {"i": 2, "type": "answer", "content": " c "},
            {"i": 0, "type": "thought", "content": "a\n"},
            {"i": 1, "type": "tool", "content": "\tb"},
        ],
    )
    out = normalize(record)
    assert [s["i"] for s in out["steps"]] == [0, 1, 2]
    assert [s["content"] for s in out["steps"]] == ["a\n", "\tb", " c "]
    assert out["prompt"] == "  spaced prompt \n"
    assert [s["i"] for s in record["steps"]] == [2, 0, 1]  # input untouched


def test_normalize_fills_latest_defaults():
    v1_record = trace()
    del v1_record["model"], v1_record["score"], v1_record["trace_version"]
    out = normalize(v1_record)
    assert out["model"] is None and out["score"] is None and out["trace_version"] == 1
    assert normalize(trace(model="m"))["model"] == "m"
