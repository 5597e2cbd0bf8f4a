"""The validate stage decides valid vs dead letter for every kind of input, and never raises."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.coordinates import Coordinates, source_headers, source_offset
from streams.materialize import InboundEvent, dead_letter_rows, trace_rows
from streams.validate import Accepted, Rejected, Validator
from warehouse.tables import column_names

pytestmark = pytest.mark.unit

AT = Coordinates("traces.raw", 2, 41)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(default_registry())


@pytest.fixture
def validator(codec: AvroCodec) -> Validator:
    return Validator(codec, max_event_bytes=1024 * 1024)


def trace(**overrides) -> dict:
    record = {
        "trace_id": "t-1",
        "trace_version": 1,
        "prompt": "What is 2 + 3?",
        "steps": [{"i": 1, "type": "calculate", "content": "2 + 3 = 5"}, {"i": 0, "type": "plan", "content": "add"}],
        "final_answer": "5",
        "meta": {"difficulty": "easy"},
        "source": "unit",
        "created_at": NOW,
        "score": None,
    }
    record.update(overrides)
    return record


def dead_letter_of(codec: AvroCodec, outcome: Rejected) -> dict:
    record, _ = codec.decode_latest(outcome.payload, "DeadLetter")
    return record


def test_v1_trace_is_accepted_as_latest_with_steps_in_order(validator, codec):
    outcome = validator(codec.encode(trace(), "Trace", version=1), b"t-1", AT)
    assert isinstance(outcome, Accepted)
    assert outcome.writer_version == 1
    record, writer = codec.decode(outcome.payload)
    assert writer.version == codec.registry.latest("Trace").version
    assert [s["i"] for s in record["steps"]] == [0, 1]
    assert record["model"] is None


def test_canonical_latest_event_is_forwarded_byte_for_byte(validator, codec):
    steps = [{"i": 0, "type": "plan", "content": "add"}, {"i": 1, "type": "calculate", "content": "5"}]
    payload = codec.encode(trace(steps=steps, model="m-1"), "Trace")
    outcome = validator(payload, b"t-1", AT)
    assert isinstance(outcome, Accepted) and outcome.payload == payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{\"prompt\": \"json, not avro\"}", "not_avro"),
        (b"\xc3\x01" + b"\x00" * 8 + b"body", "unknown_schema"),
        (b"", "not_avro"),
    ],
)
def test_undecodable_bytes_are_dead_lettered_with_their_reason(validator, codec, payload, reason):
    outcome = validator(payload, b"t-9", AT)
    assert isinstance(outcome, Rejected) and outcome.reason == reason
    letter = dead_letter_of(codec, outcome)
    assert letter["original"] == payload
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == AT
    assert letter["stage"] == "validate"
    assert letter["message"].startswith("traces.raw[2]@41: ")
    assert letter["trace_id"] == "t-9"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"steps": []}, "no_steps"),
        ({"steps": [{"i": 0, "type": "a", "content": "x"}, {"i": 0, "type": "b", "content": "y"}]}, "duplicate_step_index"),
        ({"steps": [{"i": 0, "type": "a", "content": "x" * 20_001}]}, "step_too_long"),
        ({"prompt": "p" * 50_001}, "prompt_too_long"),
    ],
)
def test_rule_breaking_traces_are_dead_lettered(validator, codec, overrides, reason):
    outcome = validator(codec.encode(trace(**overrides), "Trace"), b"t-1", AT)
    assert isinstance(outcome, Rejected) and outcome.reason == reason
    assert dead_letter_of(codec, outcome)["trace_id"] == "t-1"


def test_oversized_event_is_refused_before_decoding(codec):
    payload = codec.encode(trace(), "Trace")
    validator = Validator(codec, max_event_bytes=len(payload) - 1)
    outcome = validator(payload, b"t-1", AT)
    assert isinstance(outcome, Rejected) and outcome.reason == "event_too_large"


def test_trace_rows_keep_every_field_and_the_kafka_coordinates(codec):
    payload = codec.encode(trace(model="m-2"), "Trace")
    batch = trace_rows([InboundEvent(AT, b"t-1", payload, writer_version=1)], codec, NOW)
    row = dict(zip(column_names("traces"), (column[0] for column in batch.columns)))
    assert row["trace_id"] == "t-1" and row["model"] == "m-2" and row["schema_version"] == 1
    assert row["step_index"] == [1, 0] and row["step_type"] == ["calculate", "plan"]
    assert (row["topic"], row["partition"], row["offset"]) == AT
    assert not batch.rejected


def test_undecodable_valid_record_becomes_a_materialize_dead_letter(codec):
    batch = trace_rows([InboundEvent(AT, b"t-1", b"garbage")], codec, NOW)
    assert len(batch) == 0 and len(batch.rejected) == 1
    letter = dead_letter_of(codec, batch.rejected[0])
    assert letter["stage"] == "materialize" and letter["reason"] == "not_avro"


def test_dead_letter_rows_keep_even_undecodable_dead_letters(codec):
    batch = dead_letter_rows([InboundEvent(AT, None, b"not a dead letter")], codec, NOW)
    assert len(batch) == 1


def test_source_headers_round_trip_and_filter_by_topic():
    headers = source_headers(Coordinates("traces.raw", 0, 17))
    assert source_offset(headers, "traces.raw") == 17
    assert source_offset(headers, "traces.valid") is None
    assert source_offset(dict(headers), "traces.raw") == 17
