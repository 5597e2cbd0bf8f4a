"""Single-object Avro codec: round trips, schema evolution on read, and bad bytes."""

from datetime import datetime, timedelta, timezone

import pytest

from schemas.codec import AvroCodec, peek_fingerprint
from schemas.errors import (
    CorruptAvroError,
    DecodeError,
    EncodeError,
    NotAvroError,
    UnknownFingerprintError,
    WrongSchemaError,
)
from schemas.registry import default_registry
from schemas.validation import Reason

pytestmark = pytest.mark.unit

CREATED = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)


def trace_v1(**overrides):
    record = {
        "trace_id": "t-1",
        "trace_version": 3,
        "prompt": "What is 2+2?",
        "steps": [
            {"i": 0, "type": "thought", "content": "add them"},
            {"i": 1, "type": "tool_call", "content": "calc(2+2)  \n"},
        ],
        "final_answer": "4",
        "meta": {"lang": "en", "run": "7"},
        "source": "unit-test",
        "created_at": CREATED,
        "score": 0.75,
    }
    record.update(overrides)
    return record


def trace_v2(**overrides):
    return trace_v1(**{"model": "tiny-lm", **overrides})


@pytest.fixture(scope="module")
def codec():
    return AvroCodec(default_registry())


def test_v1_round_trip(codec):
    data = codec.encode(trace_v1(), "Trace", version=1)
    record, writer = codec.decode(data)
    assert record == trace_v1()
    assert (writer.name, writer.version) == ("Trace", 1)


def test_v2_round_trip_is_the_default_version(codec):
    data = codec.encode(trace_v2(), "Trace")
    record, writer = codec.decode(data)
    assert record == trace_v2()
    assert writer == default_registry().latest("Trace")
    assert writer.version == 2


def test_created_at_comes_back_as_aware_utc(codec):
    plus_two = CREATED.astimezone(timezone(timedelta(hours=2)))
    record, _ = codec.decode(codec.encode(trace_v2(created_at=plus_two), "Trace"))
    assert record["created_at"] == CREATED
    assert record["created_at"].tzinfo == timezone.utc


def test_epoch_millis_are_accepted_and_decode_as_datetime(codec):
    millis = int(CREATED.timestamp() * 1000)
    record, _ = codec.decode(codec.encode(trace_v2(created_at=millis), "Trace"))
    assert record["created_at"] == CREATED


def test_naive_datetime_is_refused(codec):
    with pytest.raises(EncodeError, match="naive datetime"):
        codec.encode(trace_v2(created_at=datetime(2024, 1, 1)), "Trace")


def test_record_that_does_not_fit_is_an_encode_error(codec):
    with pytest.raises(EncodeError, match="Trace v2"):
        codec.encode(trace_v2(prompt=None), "Trace")


def test_v1_bytes_decoded_as_latest_get_model_none(codec):
    data = codec.encode(trace_v1(), "Trace", version=1)
    record, writer = codec.decode_latest(data, "Trace")
    assert record == trace_v2(model=None)
    assert list(record) == [f["name"] for f in default_registry().latest("Trace").definition["fields"]]
    assert writer.version == 1


def test_fast_resolution_matches_fastavro_resolution(codec):
    from io import BytesIO

    from fastavro import schemaless_reader

    reg = default_registry()
    v1, v2 = reg.get("Trace", 1), reg.get("Trace", 2)
    data = codec.encode(trace_v1(score=None), "Trace", version=1)
    expected = schemaless_reader(BytesIO(data[10:]), v1.parsed, v2.parsed)
    record, _ = codec.decode_latest(data, "Trace")
    assert record == expected and list(record) == list(expected)


def test_v2_bytes_decoded_as_latest_are_unchanged(codec):
    record, writer = codec.decode_latest(codec.encode(trace_v2(), "Trace"), "Trace")
    assert record == trace_v2()
    assert writer.version == 2


def test_header_layout(codec):
    data = codec.encode(trace_v2(), "Trace")
    fp = default_registry().latest("Trace").fingerprint
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fp
    assert peek_fingerprint(data) == fp
    assert peek_fingerprint(b"\xc3\x01abc") is None
    assert peek_fingerprint(b"{}" * 10) is None


def test_dead_letter_round_trip(codec):
    letter = {
        "original": b"\x00\xffraw",
        "reason": "too_many_steps",
        "message": "trace has 1,001 steps; the limit is 1,000",
        "stage": "validate",
        "source_topic": "traces.raw",
        "source_partition": 2,
        "source_offset": 2**40,
        "trace_id": None,
        "failed_at": CREATED,
    }
    record, writer = codec.decode(codec.encode(letter, "DeadLetter"))
    assert record == letter and writer.name == "DeadLetter"


def test_decode_latest_of_another_record_type(codec):
    letter = {
        "original": b"",
        "reason": "x",
        "message": "x",
        "stage": "validate",
        "source_topic": "t",
        "source_partition": 0,
        "source_offset": 0,
        "failed_at": CREATED,
    }
    with pytest.raises(WrongSchemaError, match="DeadLetter v1, not Trace") as info:
        codec.decode_latest(codec.encode(letter, "DeadLetter"), "Trace")
    assert info.value.reason == Reason.UNKNOWN_SCHEMA


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\xc3\x01\x00", b'{"trace_id": "x", "prompt": 1}'])
def test_garbage_is_not_avro(codec, data):
    with pytest.raises(NotAvroError, match="C3 01") as info:
        codec.decode(data)
    assert info.value.reason == Reason.NOT_AVRO


def test_unknown_fingerprint(codec):
    data = b"\xc3\x01" + bytes.fromhex("0102030405060708") + b"\x00"
    with pytest.raises(UnknownFingerprintError, match="0102030405060708") as info:
        codec.decode(data)
    assert info.value.reason == Reason.UNKNOWN_SCHEMA
    assert info.value.fingerprint == bytes.fromhex("0102030405060708")


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_body_is_corrupt(codec, cut):
    data = codec.encode(trace_v2(), "Trace")
    with pytest.raises(CorruptAvroError, match="Trace v2") as info:
        codec.decode(data[:-cut])
    assert info.value.reason == Reason.CORRUPT_AVRO


def test_empty_body_is_corrupt(codec):
    header = codec.encode(trace_v2(), "Trace")[:10]
    with pytest.raises(CorruptAvroError):
        codec.decode(header)


def test_trailing_bytes_are_corrupt(codec):
    data = codec.encode(trace_v2(), "Trace") + b"\x00\x00"
    with pytest.raises(CorruptAvroError, match="2 unexpected bytes"):
        codec.decode(data)
    with pytest.raises(CorruptAvroError, match="2 unexpected bytes"):
        codec.decode_latest(data, "Trace")


def test_invalid_utf8_is_corrupt(codec):
    data = bytearray(codec.encode(trace_v2(trace_id="abc"), "Trace"))
    assert data[11:14] == b"abc"  # after the header and the 1-byte length
    data[11] = 0xFF
    with pytest.raises(CorruptAvroError):
        codec.decode(bytes(data))


def test_every_decode_error_reason_is_a_reason_code():
    for cls in (NotAvroError, UnknownFingerprintError, CorruptAvroError, WrongSchemaError):
        assert issubclass(cls, DecodeError)
        assert Reason(cls.reason)
