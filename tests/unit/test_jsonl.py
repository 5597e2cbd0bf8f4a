"""Reading a JSONL file of traces without Kafka: line numbers, reasons, blank lines."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from ingest.jsonl import LineError, count_lines, read_jsonl_records

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _now() -> datetime:
    return NOW


def _trace(n: int, **extra) -> dict:
    return {
        "trace_id": f"t-{n}",
        "trace_version": 1,
        "prompt": f"What is {n} + {n}?",
        "steps": [
            {"i": 0, "type": "calculate", "content": f"{n} + {n} = {2 * n}"},
            {"i": 1, "type": "conclude", "content": f"Final answer: {2 * n}"},
        ],
        "final_answer": str(2 * n),
        "meta": {"topic": "addition"},
        "source": "unit-test",
        **extra,
    }


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_non_json_line_is_reported_with_its_number_and_reading_goes_on(tmp_path):
    path = _write(tmp_path, [
        json.dumps(_trace(1)),
        '{"prompt": "unterminated',
        json.dumps(_trace(3)),
        '{"prompt": "a" "steps": []}',
        json.dumps(_trace(5)),
    ])
    items = list(read_jsonl_records(path, _now))
    assert [n for n, _ in items] == [1, 2, 3, 4, 5]
    assert [type(x).__name__ for _, x in items] == ["dict", "LineError", "dict", "LineError", "dict"]
    err2, err4 = items[1][1], items[3][1]
    assert err2 == LineError(2, "not_json", err2.message)
    assert err2.message.startswith("line 2 is not valid JSON: Unterminated string")
    assert err4.reason == "not_json"
    assert err4.message == "line 4 is not valid JSON: Expecting ',' delimiter at column 16"
    assert [x["trace_id"] for _, x in items if isinstance(x, dict)] == ["t-1", "t-3", "t-5"]


def test_bad_shape_is_reported_as_invalid_shape(tmp_path):
    no_answer = _trace(2)
    del no_answer["final_answer"]
    path = _write(tmp_path, [
        json.dumps(_trace(1)),
        json.dumps(no_answer),
        json.dumps(_trace(3, steps="first add, then done")),
        "[1, 2, 3]",
        json.dumps(_trace(5, colour="blue")),
    ])
    items = dict(read_jsonl_records(path, _now))
    assert isinstance(items[1], dict)
    for n in (2, 3, 4, 5):
        assert isinstance(items[n], LineError), n
        assert items[n].reason == "invalid_shape"
        assert items[n].message.startswith(f"line {n}")
    assert "final_answer" in items[2].message
    assert "steps" in items[3].message


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path):
    path = tmp_path / "blanks.jsonl"
    path.write_text(
        "\n" + json.dumps(_trace(1)) + "\n   \n\r\n" + json.dumps(_trace(2)) + "\r\n\n",
        encoding="utf-8",
    )
    items = list(read_jsonl_records(path, _now))
    assert [n for n, _ in items] == [2, 5]
    assert all(isinstance(x, dict) for _, x in items)
    assert count_lines(path) == 6


def test_missing_id_and_time_are_filled_and_rule_breakers_still_parse(tmp_path):
    """Shape only: an empty trace parses (the validator dead-letters it as no_steps)."""
    bare = _trace(1)
    del bare["trace_id"]
    path = _write(tmp_path, [json.dumps(bare), json.dumps(_trace(2, steps=[]))])
    items = dict(read_jsonl_records(path, _now))
    assert items[1]["trace_id"]
    assert items[1]["created_at"] == NOW
    assert items[2]["steps"] == []


def test_invalid_utf8_is_not_json(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(_trace(1)).encode() + b"\n\xff\xfe{}\n")
    items = dict(read_jsonl_records(path, _now))
    assert isinstance(items[1], dict)
    assert items[2].reason == "not_json"
    assert items[2].message.startswith("line 2 is not valid UTF-8")


def test_created_at_in_the_file_is_kept(tmp_path):
    path = _write(tmp_path, [json.dumps(_trace(1, created_at="2025-05-06T07:08:09.123Z"))])
    [(_, rec)] = list(read_jsonl_records(path, _now))
    assert rec["created_at"] == datetime(2025, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
