"""Trace rules: each limit passes at the limit and fails just over it, with a useful message."""

from datetime import datetime, timezone

import pytest

from schemas.validation import (
    CREATED_AT_MAX,
    CREATED_AT_MIN,
    INT32_MAX,
    INT32_MIN,
    MAX_ANSWER_CHARS,
    MAX_EVENT_BYTES,
    MAX_PROMPT_CHARS,
    MAX_STEP_CHARS,
    MAX_STEPS,
    WAREHOUSE_COLUMNS,
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
    assert v == Violation(Reason.STEP_TOO_LONG, "step 3 content is 25,012 chars; the limit is 20,000", "steps.3.content")
    long_step[3]["content"] = "x" * (MAX_STEP_CHARS + 1)
    assert check_trace(trace(steps=long_step)).reason == Reason.STEP_TOO_LONG


def test_step_count_limits():
    assert check_trace(trace(steps=steps(1))) is None
    assert check_trace(trace(steps=steps(MAX_STEPS))) is None
    v = check_trace(trace(steps=steps(MAX_STEPS + 1)))
    assert v == Violation(Reason.TOO_MANY_STEPS, "trace has 1,001 steps; the limit is 1,000", "steps")
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


@pytest.mark.parametrize(
    ("overrides", "reason", "field"),
    [
        ({"trace_version": 2**40}, Reason.TRACE_VERSION_OUT_OF_RANGE, "trace_version"),
        ({"trace_version": -(2**40)}, Reason.TRACE_VERSION_OUT_OF_RANGE, "trace_version"),
        ({"trace_version": INT32_MAX + 1}, Reason.TRACE_VERSION_OUT_OF_RANGE, "trace_version"),
        ({"trace_version": INT32_MIN - 1}, Reason.TRACE_VERSION_OUT_OF_RANGE, "trace_version"),
        ({"created_at": datetime(1899, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)},
         Reason.CREATED_AT_OUT_OF_RANGE, "created_at"),
        ({"created_at": datetime(2300, 1, 1, tzinfo=timezone.utc)}, Reason.CREATED_AT_OUT_OF_RANGE, "created_at"),
        ({"created_at": datetime(9999, 1, 1)}, Reason.CREATED_AT_OUT_OF_RANGE, "created_at"),
        ({"created_at": -(2**62)}, Reason.CREATED_AT_OUT_OF_RANGE, "created_at"),
        ({"score": float("nan")}, Reason.SCORE_NOT_FINITE, "score"),
        ({"score": float("inf")}, Reason.SCORE_NOT_FINITE, "score"),
        ({"score": float("-inf")}, Reason.SCORE_NOT_FINITE, "score"),
        ({"steps": [{"i": 0, "type": "t", "content": ""}, {"i": 2**31, "type": "t", "content": ""}]},
         Reason.STEP_INDEX_TOO_LARGE, "steps.1.i"),
    ],
)
def test_warehouse_ranges(overrides, reason, field):
    v = check_trace(trace(**overrides))
    assert (v.reason, v.field) == (reason, field)
    assert field.split(".")[0].rstrip("s") in v.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"trace_version": INT32_MAX}, {"trace_version": INT32_MIN}, {"trace_version": 0},
        {"created_at": CREATED_AT_MIN}, {"created_at": CREATED_AT_MAX}, {"created_at": 0},
        {"score": -1e308}, {"score": 0.0},
        {"steps": [{"i": INT32_MAX, "type": "t", "content": ""}]},
        {"prompt": "a\x00b", "meta": {"k\x00": "\x00v", "": ""}, "source": "\x00", "model": "m\x00"},
    ],
)
def test_warehouse_ranges_at_the_limits(overrides):
    assert check_trace(trace(**overrides)) is None


def _int_range(column_type):
    bits = int(column_type.removeprefix("Array(").removesuffix(")").removeprefix("Int"))
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def test_limits_match_the_warehouse_columns():
    """schemas may not import warehouse code, so its limits are checked against the columns here."""
    from warehouse.tables import TRACE_COLUMNS

    columns = dict(TRACE_COLUMNS)
    for name, type_ in WAREHOUSE_COLUMNS.items():
        assert columns[name] == type_, f"traces.{name} is {columns[name]}; update schemas.validation's limit for it"
    assert _int_range(columns["trace_version"]) == (INT32_MIN, INT32_MAX)
    assert _int_range(columns["step_index"]) == (INT32_MIN, INT32_MAX)
    assert columns["created_at"].startswith("DateTime64(3")
    assert (CREATED_AT_MIN.isoformat(), CREATED_AT_MAX.isoformat()) == (
        "1900-01-01T00:00:00+00:00", "2299-12-31T23:59:59.999000+00:00")  # ClickHouse's DateTime64 range
    # Every other column holds any value its Avro field can (text), or is not from the trace.
    any_text = {"String", "LowCardinality(String)", "Array(String)", "Array(LowCardinality(String))",
                "Map(String, String)", "Nullable(String)"}
    not_from_trace = {"schema_version", "topic", "partition", "offset", "ingested_at"}
    unchecked = {n: t for n, t in columns.items() if n not in WAREHOUSE_COLUMNS and n not in not_from_trace}
    assert {n: t for n, t in unchecked.items() if t not in any_text} == {}, "a new column needs a rule"


def test_reason_codes():
    assert Reason.NOT_AVRO == "not_avro"
    assert {r.value for r in Reason} >= {
        "not_avro", "unknown_schema", "corrupt_avro", "event_too_large", "no_steps",
        "too_many_steps", "duplicate_step_index", "negative_step_index", "prompt_too_long",
        "answer_too_long", "step_too_long", "empty_prompt", "empty_trace_id",
        "empty_step_type", "not_json", "invalid_shape", "warehouse_rejected",
        "trace_version_out_of_range", "created_at_out_of_range", "score_not_finite",
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


def test_an_avro_int_past_32_bits_decodes_and_is_caught():
    """fastavro writes and reads a 2^40 "int" without complaint; the rule is what stops it."""
    from schemas.codec import AvroCodec
    from schemas.registry import default_registry

    codec = AvroCodec(default_registry())
    record, _ = codec.decode_latest(codec.encode(trace(trace_version=2**40), "Trace"), "Trace")
    assert record["trace_version"] == 2**40
    assert check_trace(record).reason == Reason.TRACE_VERSION_OUT_OF_RANGE
