"""canonical_json and ContentHasher: the bytes both read paths must agree on."""

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from dataset.checks import iso_millis
from dataset.filter import TraceFilter
from dataset.hashing import RECORD_KEYS, ContentHasher, canonical_json, content_sha256
from dataset.select import select
from dataset.split import Split
from schemas.errors import DatasetIntegrityError

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, 0, 7000, tzinfo=timezone.utc)


def record(partition=0, offset=0, **overrides):
    r = {
        "topic": "traces.valid",
        "partition": partition,
        "offset": offset,
        "trace_id": f"t-{partition}-{offset}",
        "trace_version": 1,
        "prompt": "Combien font 2+2 ? 🤔",
        "steps": [
            {"i": 0, "type": "plan", "content": "add\n  then check"},
            {"i": 1, "type": "calc", "content": "4"},
        ],
        "final_answer": "4",
        "meta": {"z": "1", "a": "ü"},
        "source": "gen",
        "created_at": T0,
        "score": 0.1,
        "model": "tiny",
    }
    r.update(overrides)
    return r


def test_canonical_json_exact_bytes():
    expected = (
        '{"created_at":"2024-05-01T12:00:00.007Z","final_answer":"4","meta":{"a":"ü","z":"1"},'
        '"model":"tiny","offset":0,"partition":0,"prompt":"Combien font 2+2 ? 🤔","score":0.1,'
        '"source":"gen","steps":[{"content":"add\\n  then check","i":0,"type":"plan"},'
        '{"content":"4","i":1,"type":"calc"}],"topic":"traces.valid","trace_id":"t-0-0",'
        '"trace_version":1}'
    ).encode("utf-8")
    assert canonical_json(record()) == expected


def test_canonical_json_ignores_key_order_and_extra_keys():
    r = record()
    shuffled = {k: r[k] for k in reversed(list(r))}
    shuffled["meta"] = {"a": "ü", "z": "1"}
    shuffled["_ingested_at"] = "noise"
    assert canonical_json(shuffled) == canonical_json(r)


def test_canonical_json_same_instant_any_timezone():
    plus5 = timezone(timedelta(hours=5, minutes=30))
    assert canonical_json(record(created_at=T0.astimezone(plus5))) == canonical_json(record())
    # sub-millisecond digits do not exist in the contract; they never reach the bytes
    later = T0 + timedelta(microseconds=999)
    assert canonical_json(record(created_at=later)) == canonical_json(record())


def test_canonical_json_refuses_naive_datetimes():
    with pytest.raises(DatasetIntegrityError, match="timezone"):
        canonical_json(record(created_at=datetime(2024, 5, 1)))


def test_canonical_json_refuses_missing_keys():
    r = record()
    del r["model"]
    with pytest.raises(DatasetIntegrityError, match="'model'"):
        canonical_json(r)


def test_canonical_json_sorts_steps_and_coerces_numbers():
    r = record(steps=list(reversed(record()["steps"])), score=1)
    out = json.loads(canonical_json(r))
    assert [s["i"] for s in out["steps"]] == [0, 1]
    assert out["score"] == 1.0 and b'"score":1.0' in canonical_json(r)
    assert json.loads(canonical_json(record(score=None)))["score"] is None


def test_canonical_json_has_exactly_the_contract_keys():
    assert tuple(sorted(json.loads(canonical_json(record())))) == tuple(sorted(RECORD_KEYS))


def test_iso_millis():
    value = datetime(1999, 1, 2, 3, 4, 5, 678999, tzinfo=timezone.utc)
    assert iso_millis(value) == "1999-01-02T03:04:05.678Z"
    assert iso_millis(datetime(5, 1, 1, tzinfo=timezone.utc)) == "0005-01-01T00:00:00.000Z"


def test_hasher_is_sha256_of_lines():
    records = [record(0, 0), record(0, 1), record(1, 0)]
    hasher = ContentHasher()
    for r in records:
        hasher.add(r)
    expected = hashlib.sha256(b"".join(canonical_json(r) + b"\n" for r in records)).hexdigest()
    assert hasher.hexdigest() == expected == content_sha256(records)
    assert hasher.count == 3


def test_empty_hash():
    assert ContentHasher().hexdigest() == hashlib.sha256(b"").hexdigest()
    assert ContentHasher().count == 0


@pytest.mark.parametrize(
    "positions",
    [[(0, 5), (0, 4)], [(1, 0), (0, 9)], [(0, 5), (0, 5)]],
)
def test_hasher_refuses_backwards_or_repeated_positions(positions):
    hasher = ContentHasher()
    hasher.add(record(*positions[0]))
    before = hasher.hexdigest()
    with pytest.raises(DatasetIntegrityError, match=r"\(partition, offset\) order"):
        hasher.add(record(*positions[1]))
    assert hasher.hexdigest() == before and hasher.count == 1


def test_hash_over_selected_records_is_read_path_independent():
    """Two readers returning the same rows in different dict shapes hash the same."""
    rows = [record(p, o, score=(o % 10) / 10) for p in range(2) for o in range(200)]
    from_warehouse = [{**{k: r[k] for k in reversed(RECORD_KEYS)}, "_version": 1} for r in rows]
    f, s = TraceFilter(min_score=0.3), Split(0.2)
    a = content_sha256(r for _, r in select(rows, f, s, "all"))
    b = content_sha256(r for _, r in select(from_warehouse, f, s, "all"))
    assert a == b
