"""`tracestream tail` prints one JSON line per record; every value type must survive the trip."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest
from aiokafka.structs import ConsumerRecord

from cli.subscribe import item_json
from consumers.records import decode_record, undecodable
from kafkalog.errors import UndecodableRecordError
from schemas.codec import AvroCodec
from schemas.registry import default_registry

pytestmark = pytest.mark.unit

CODEC = AvroCodec(default_registry())
FAILED_AT = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)


def message(value: bytes, headers=()) -> ConsumerRecord:
    return ConsumerRecord(topic="traces.dlq", partition=1, offset=7, timestamp=1_772_600_767_890, timestamp_type=0,
                          key=b"t-9", value=value, checksum=None, serialized_key_size=3,
                          serialized_value_size=len(value), headers=list(headers))


def test_a_record_line_has_coordinates_writer_and_a_json_value():
    original = b"\xc3\x01garbage\xff"
    letter = {"original": original, "reason": "not_avro", "message": "m", "stage": "validate",
              "source_topic": "traces.raw", "source_partition": 1, "source_offset": 3, "trace_id": "t-9",
              "failed_at": FAILED_AT}
    record = decode_record(message(CODEC.encode(letter, "DeadLetter"), [("tracestream-source-offset", b"3")]), CODEC)
    line = json.loads(item_json(record))
    assert {k: line[k] for k in ("topic", "partition", "offset", "key", "schema", "schema_version")} == {
        "topic": "traces.dlq", "partition": 1, "offset": 7, "key": "t-9", "schema": "DeadLetter", "schema_version": 1}
    assert line["timestamp"] == "2026-03-04T05:06:07.890000+00:00"
    assert line["headers"] == {"tracestream-source-offset": "3"}
    assert base64.b64decode(line["value"]["original"]) == original
    assert line["value"]["failed_at"] == FAILED_AT.isoformat()
    assert "error" not in line


def test_an_undecodable_line_has_the_error_and_the_original_bytes():
    bad = message(b"plain text")
    with pytest.raises(UndecodableRecordError) as caught:
        decode_record(bad, CODEC)
    line = json.loads(item_json(undecodable(bad, caught.value)))
    assert line["error"]["reason"] == "not_avro"
    assert "traces.dlq[1]@7" in line["error"]["message"]
    assert base64.b64decode(line["original"]) == b"plain text"
    assert "value" not in line and "headers" not in line
