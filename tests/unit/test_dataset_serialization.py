"""The fast serialization (orjson, values serialized once) gives exactly the reference bytes.

The reference is ``json.dumps(..., sort_keys=True, ensure_ascii=False,
separators=(",", ":"))`` of the canonical record (the content hash of every
stored manifest) and of each export format's dict. Any difference would change
hashes and exported files, so this compares byte for byte over awkward values:
every kind of escape, non-BMP text, non-ASCII meta keys, floats with and
without exponents, NaN and infinities, ints past 64 bits, unsorted steps.
"""

import json
import math
import random
import struct
from datetime import datetime, timedelta, timezone

import pytest

from dataset.formats import EXPORTERS, FORMATS, _line, export_line, line_writer
from dataset.hashing import (
    ContentHasher,
    canonical,
    canonical_json,
    canonical_record,
    float_json,
    json_bytes,
)

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)


def reference(value) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def awkward_text(rnd: random.Random) -> str:
    pools = [
        lambda: chr(rnd.randrange(0, 0x20)),  # control characters: \n, \t, \u0001 ...
        lambda: rnd.choice('"\\/\x7f\u2028\u2029<>&\''),
        lambda: chr(rnd.randrange(0x20, 0x7F)),
        lambda: chr(rnd.randrange(0x80, 0xD800)),
        lambda: chr(rnd.randrange(0xE000, 0x110000)),
        # what the export lines are cut at (dataset.formats): must never be found inside a value
        lambda: rnd.choice([',"meta":{', '},"model":', ',"steps":[', '],"topic":', ',"prompt":', ',"score":',
                            ',"source":', ',"trace_id":', ',"final_answer":', ',"', '",', '}', ']', ',']),
    ]
    return "".join(rnd.choice(pools)() for _ in range(rnd.randrange(0, 12)))


KEY_NAMES = ["meta", "model", "steps", "topic", "prompt", "score", "source", "trace_id", "final_answer", "i", "type"]


def awkward_float(rnd: random.Random) -> float | None:
    return rnd.choice([
        None, 0.0, -0.0, 1.0, 0.5, 1e-4, 9.999e-05, 1e-05, 1e15, 1e16, 1.5e300, 5e-324,
        float("nan"), float("inf"), float("-inf"), rnd.random(), rnd.uniform(-1e20, 1e20),
        struct.unpack("<d", rnd.randbytes(8))[0],
    ])


def awkward_record(rnd: random.Random, offset: int) -> dict:
    steps = [{"i": i, "type": awkward_text(rnd), "content": awkward_text(rnd)} for i in range(rnd.randrange(0, 5))]
    rnd.shuffle(steps)
    return {
        "topic": rnd.choice(["traces.valid", 'odd"topic/ü']),
        "partition": rnd.randrange(0, 8),
        "offset": offset,
        "trace_id": awkward_text(rnd),
        "trace_version": rnd.choice([1, 2, -(2**31), 2**31 - 1]),
        "prompt": awkward_text(rnd),
        "steps": steps,
        "final_answer": awkward_text(rnd),
        "meta": {rnd.choice([awkward_text(rnd), *KEY_NAMES]): awkward_text(rnd) for _ in range(rnd.randrange(0, 5))},
        "source": awkward_text(rnd),
        "created_at": T0 + timedelta(milliseconds=rnd.randrange(-10**12, 10**12)),
        "score": awkward_float(rnd),
        "model": rnd.choice([None, awkward_text(rnd)]),
    }


def test_canonical_json_and_every_format_are_the_reference_bytes():
    rnd = random.Random(20261130)
    for offset in range(1500):
        r = awkward_record(rnd, offset)
        assert canonical_json(r) == reference(canonical_record(r)), r
        for fmt in FORMATS:
            for split in ("train", "eval"):
                assert export_line(fmt, split, r) == _line(EXPORTERS[fmt](r, split)), (fmt, r)


def test_the_content_hash_is_unchanged_by_the_fast_path():
    rnd = random.Random(7)
    records = [awkward_record(rnd, offset) for offset in range(500)]
    for i, r in enumerate(records):
        r["partition"], r["offset"] = 0, i
    import hashlib

    expected = hashlib.sha256(b"".join(reference(canonical_record(r)) + b"\n" for r in records)).hexdigest()
    hasher = ContentHasher()
    for r in records:
        hasher.add(r)
    assert hasher.hexdigest() == expected


def test_every_code_point_serializes_as_json_dumps_does():
    text = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    assert json_bytes(text) == reference(text)
    assert json_bytes({text[:5000]: [text[5000:9000]]}) == reference({text[:5000]: [text[5000:9000]]})


def test_floats_are_written_as_repr_with_or_without_an_exponent():
    rnd = random.Random(3)
    for _ in range(20000):
        x = struct.unpack("<d", rnd.randbytes(8))[0]
        assert float_json(x) == reference(x)
    for x in (0.0, -0.0, 1e-4, 9.999e-05, 1e16, 9999999999999998.0, math.nan, math.inf, -math.inf, None):
        assert float_json(x) == reference(x)


def test_what_orjson_refuses_falls_back_to_the_reference():
    for value in (2**64, -(2**63) - 1, {1: "int key"}, ["a\ud800b"][:0]):
        assert json_bytes(value) == reference(value)
    with pytest.raises(UnicodeEncodeError):
        json_bytes("lone \ud800 surrogate")  # as the reference does: such text cannot be hashed


def test_line_writer_uses_the_canonical_form_once():
    r = awkward_record(random.Random(1), 5)
    c = canonical(r)
    assert c.data == canonical_json(r)
    for fmt in FORMATS:
        assert line_writer(fmt)("eval", c) == export_line(fmt, "eval", r)


def test_iso_millis_is_the_field_by_field_rendering():
    rnd = random.Random(11)
    low = datetime(1, 1, 1, tzinfo=timezone.utc)
    base = awkward_record(rnd, 0)
    for _ in range(20000):
        v = low + timedelta(microseconds=rnd.randrange(0, 315537897599999999))
        expected = (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
                    f".{v.microsecond // 1000:03d}Z")
        assert canonical_record({**base, "created_at": v})["created_at"] == expected
        other = v.astimezone(timezone(timedelta(hours=rnd.randrange(-12, 13)))) if 1 < v.year < 9999 else v
        assert canonical_record({**base, "created_at": other})["created_at"] == expected
