"""The trace index reads each answer's trace_id and offset from the warehouse's JSON line itself."""

from __future__ import annotations

import json

import pytest

from warehouse.trace_index import _offset_of, _trace_id_of


def answer(trace_id: str, offset: int, meta: dict) -> bytes:
    # ClickHouse's JSONEachRow escapes "/" as "\/"; json.dumps does not, so escape it as the engine does.
    row = {"trace_id": trace_id, "prompt": 'says "offset":7', "meta": meta, "topic": "t.valid", "partition": 2,
           "offset": offset, "ingested_at": "2026-11-30T10:00:00.000Z"}
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/").encode()


@pytest.mark.parametrize("trace_id", ["plain-id", 'quote"and\\slash/é', "ünïcode-☃"])
def test_trace_id_and_offset_come_back_exactly(trace_id: str):
    line = answer(trace_id, 123456789, {"offset": "5", "k": "v"})
    assert _trace_id_of(line) == trace_id
    assert _offset_of(line) == 123456789


def test_a_line_without_its_trace_id_first_is_refused():
    with pytest.raises(ValueError, match="trace_id"):
        _trace_id_of(b'{"prompt":"x","trace_id":"a"}')
