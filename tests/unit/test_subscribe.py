"""Subscription logic without a broker: topic names, decoding into records, what may be committed."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.handled import HandledOffsets
from consumers.records import Record, decode_record, topic_name, undecodable
from consumers.subscribe import subscribe
from dataset.manifest import Manifest
from dataset.ranges import OffsetRange
from deploy.settings import Settings
from kafkalog.errors import UndecodableRecordError
from schemas.codec import AvroCodec
from schemas.errors import ConfigurationError
from schemas.registry import default_registry

pytestmark = pytest.mark.unit

CODEC = AvroCodec(default_registry())
CREATED = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
SETTINGS = Settings(topic_prefix="team-a.", kafka_bootstrap="127.0.0.1:1")


def trace(**extra) -> dict:
    return {"trace_id": "t-1", "trace_version": 1, "prompt": "2+2?", "steps": [{"i": 0, "type": "thought",
            "content": "add"}], "final_answer": "4", "meta": {"k": "v"}, "source": "unit", "created_at": CREATED,
            "score": None, **extra}


def message(value: bytes | None, *, key: bytes | None = b"t-1", offset: int = 41, headers=()) -> ConsumerRecord:
    return ConsumerRecord(topic="team-a.traces.raw", partition=2, offset=offset, timestamp=1_700_000_000_123,
                          timestamp_type=0, key=key, value=value, checksum=None, serialized_key_size=0,
                          serialized_value_size=0, headers=list(headers))


def test_logical_topic_names_get_the_prefix_and_other_names_are_kept():
    assert topic_name(SETTINGS, "traces.valid") == "team-a.traces.valid"
    assert topic_name(SETTINGS, "runs.events") == "team-a.runs.events"
    assert topic_name(SETTINGS, "team-a.traces.valid") == "team-a.traces.valid"
    assert topic_name(SETTINGS, "someone.elses.topic") == "someone.elses.topic"
    assert topic_name(Settings(), "traces.dlq") == "traces.dlq"


def test_every_schema_version_decodes_to_the_latest_shape_and_names_its_writer():
    v1 = decode_record(message(CODEC.encode(trace(), "Trace", 1), headers=[("h", b"1")]), CODEC)
    v2 = decode_record(message(CODEC.encode(trace(model="m-7"), "Trace", 2)), CODEC)
    assert (v1.schema, v1.schema_version, v2.schema, v2.schema_version) == ("Trace", 1, "Trace", 2)
    assert v1.value["model"] is None and v2.value["model"] == "m-7"
    assert v1.value["created_at"] == CREATED and v1.value["steps"] == trace()["steps"]
    assert (v1.topic, v1.partition, v1.offset, v1.key) == ("team-a.traces.raw", 2, 41, "t-1")
    assert v1.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)
    assert v1.headers == (("h", b"1"),)
    assert v1.coordinates == "team-a.traces.raw[2]@41"


def test_records_are_frozen_values():
    record = decode_record(message(CODEC.encode(trace(), "Trace")), CODEC)
    assert isinstance(record, Record)
    with pytest.raises(AttributeError):
        record.offset = 0  # type: ignore[misc]


def test_a_record_without_key_has_key_none():
    assert decode_record(message(CODEC.encode(trace(), "Trace"), key=None), CODEC).key is None


@pytest.mark.parametrize(("value", "reason"), [
    (b"{\"trace_id\": \"t-1\"}", "not_avro"),
    (None, "not_avro"),
    (b"\xc3\x01" + b"\x00" * 8 + b"body", "unknown_schema"),
    (CODEC.encode(trace(), "Trace")[:-3], "corrupt_avro"),
])
def test_undecodable_values_name_their_coordinates_and_keep_the_bytes(value, reason):
    with pytest.raises(UndecodableRecordError) as caught:
        decode_record(message(value, offset=99), CODEC)
    error = caught.value
    assert "team-a.traces.raw[2]@99" in str(error)
    assert (error.topic, error.partition, error.offset, error.reason) == ("team-a.traces.raw", 2, 99, reason)
    assert error.original == (value or b"")
    item = undecodable(message(value, offset=99), error)
    assert (item.coordinates, item.reason, item.original) == ("team-a.traces.raw[2]@99", reason, value or b"")


P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_only_handled_records_are_committed():
    handled = HandledOffsets()
    handled.hand_out(P0, 5)
    assert handled.take() == {}  # in the caller's hands: not committed yet
    handled.handled()
    handled.hand_out(P1, 9)
    handled.handled()
    handled.hand_out(P0, 6)
    assert handled.take() == {P0: 6, P1: 10}  # the next offset to read
    handled.abandon()  # the body for offset 6 failed
    assert handled.take() == {} and handled.in_flight is None


def test_handing_out_a_second_record_before_the_first_is_settled_is_a_bug():
    handled = HandledOffsets()
    handled.hand_out(P0, 1)
    with pytest.raises(RuntimeError, match="still in flight"):
        handled.hand_out(P0, 2)


def test_taking_the_offsets_of_revoked_partitions_leaves_the_others():
    handled = HandledOffsets()
    for tp, offset in ((P0, 3), (P1, 7)):
        handled.hand_out(tp, offset)
        handled.handled()
    handled.hand_out(P1, 8)
    assert handled.in_flight_on({P1}) and not handled.in_flight_on({P0})
    assert handled.take({P0}) == {P0: 4}
    assert handled.take() == {P1: 8}


def dataset(topic: str) -> Manifest:
    return Manifest(name="arith", version=1, topic=topic, ranges=(OffsetRange(topic, 0, 0, 10),), created_at=CREATED)


@pytest.mark.parametrize(("options", "complaint"), [
    ({"group": "g", "dataset": dataset("team-a.traces.valid")}, "committed offsets"),
    ({"since": datetime(2026, 1, 1)}, "naive datetime"),
    ({"dataset": dataset("other.traces.valid")}, "names offsets of other.traces.valid, not team-a.traces.valid"),
    ({"since": CREATED, "dataset": dataset("team-a.traces.valid")}, "not both"),
    ({"start": "newest"}, "'earliest' or 'latest'"),
    ({"on_undecodable": "skip"}, "'raise' or 'yield'"),
    ({"group": " "}, "must not be empty"),
])
def test_contradicting_options_are_refused_with_what_to_do(options, complaint):
    with pytest.raises(ConfigurationError, match=complaint):
        subscribe(SETTINGS, "traces.valid", **options)
