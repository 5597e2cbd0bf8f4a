"""Producer JSON → Avro record: defaults filled in, shape errors reported in one line."""

import uuid
from datetime import datetime, timezone

import pytest

from schemas.codec import AvroCodec
from schemas.errors import InvalidTraceShape, TracestreamError
from schemas.models import StepIn, TraceIn, parse_trace_json
from schemas.registry import default_registry
from schemas.validation import Reason

pytestmark = pytest.mark.unit

NOW = datetime(2024, 3, 4, 5, 6, 7, 891234, tzinfo=timezone.utc)


def payload(**overrides):
    obj = {
        "prompt": "What is 2+2?",
        "steps": [{"i": 0, "type": "thought", "content": "add"}],
        "final_answer": "4",
    }
    obj.update(overrides)
    return obj


def test_minimal_payload_gets_defaults():
    record = parse_trace_json(payload(), NOW)
    assert uuid.UUID(hex=record["trace_id"]).version == 4
    assert len(record["trace_id"]) == 32
    assert record["created_at"] == NOW.replace(microsecond=891000)
    assert record["trace_version"] == 1
    assert record["meta"] == {} and record["source"] == "unknown"
    assert record["score"] is None and record["model"] is None


def test_record_has_exactly_the_latest_trace_fields():
    record = parse_trace_json(payload(), NOW)
    latest = default_registry().latest("Trace").definition["fields"]
    assert list(record) == [f["name"] for f in latest]


def test_given_values_are_kept_and_round_trip_through_avro():
    obj = payload(
        trace_id="abc",
        trace_version=4,
        meta={"k": "v"},
        source="cli",
        created_at="2024-01-02T03:04:05.678+02:00",
        score=1,
        model="m",
    )
    record = parse_trace_json(obj, NOW)
    assert record["trace_id"] == "abc" and record["score"] == 1.0 and record["model"] == "m"
    assert record["created_at"] == datetime(2024, 1, 2, 1, 4, 5, 678000, tzinfo=timezone.utc)
    assert record["created_at"].tzinfo == timezone.utc
    codec = AvroCodec(default_registry())
    assert codec.decode(codec.encode(record, "Trace"))[0] == record


def test_naive_times_are_taken_as_utc():
    record = parse_trace_json(payload(created_at="2024-01-02T03:04:05"), NOW)
    assert record["created_at"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    naive_now = NOW.replace(tzinfo=None)
    assert parse_trace_json(payload(), naive_now)["created_at"].tzinfo == timezone.utc


def test_shape_errors_list_the_bad_fields():
    obj = payload(steps=[{"i": "x", "type": "t", "content": "c"}], extra=1)
    del obj["prompt"]
    with pytest.raises(InvalidTraceShape) as info:
        parse_trace_json(obj, NOW)
    err = info.value
    assert isinstance(err, TracestreamError) and not err.retriable
    assert err.reason == Reason.INVALID_SHAPE
    message = str(err)
    assert "\n" not in message
    assert "prompt: Field required" in message
    assert "steps.0.i:" in message
    assert "extra: Extra inputs are not permitted" in message
    assert len(err.problems) == 3


@pytest.mark.parametrize("obj", [[], "trace", None])
def test_non_object_is_a_shape_error(obj):
    with pytest.raises(InvalidTraceShape, match="invalid trace"):
        parse_trace_json(obj, NOW)


def test_ints_must_fit_avro_int():
    with pytest.raises(InvalidTraceShape, match="steps.0.i"):
        parse_trace_json(payload(steps=[{"i": 2**31, "type": "t", "content": "c"}]), NOW)
    # negative indices pass the shape check; validation gives them their own reason
    assert parse_trace_json(payload(steps=[{"i": -1, "type": "t", "content": "c"}]), NOW)


def test_models_forbid_extra_fields():
    with pytest.raises(Exception):
        StepIn(i=0, type="t", content="c", extra=1)
    assert TraceIn(**payload()).steps[0] == StepIn(i=0, type="thought", content="add")


@pytest.mark.parametrize("created_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
                                        "9999-12-31T23:59:59.999999-00:01"])
def test_a_time_no_utc_datetime_holds_is_a_shape_error_naming_created_at(created_at):
    with pytest.raises(InvalidTraceShape, match="created_at: Value error, .* is outside 1900-01-01") as info:
        parse_trace_json(payload(created_at=created_at), NOW)
    assert len(info.value.problems) == 1


@pytest.mark.parametrize(("created_at", "utc"), [
    ("9999-12-31T23:59:59+14:00", datetime(9999, 12, 31, 9, 59, 59, tzinfo=timezone.utc)),
    ("0001-01-01T00:00:00-14:00", datetime(1, 1, 1, 14, tzinfo=timezone.utc)),
    ("2299-12-31T23:59:59.999-14:00", datetime(2300, 1, 1, 13, 59, 59, 999000, tzinfo=timezone.utc)),
])
def test_times_at_the_edges_convert_and_are_left_to_the_range_rule(created_at, utc):
    record = parse_trace_json(payload(created_at=created_at), NOW)
    assert record["created_at"] == utc and record["created_at"].tzinfo == timezone.utc
