"""The synthetic trace generator: deterministic, correct, the right size, broken on purpose."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from statistics import mean

import pytest

from devtools.base import BASE_TIME
from devtools.breakage import PAYLOAD_KINDS, Breakage
from devtools.generator import generate_event, generate_events
from devtools.output import jsonl_line, write_jsonl
from devtools.word_problems import SOURCES, STEP_TYPES
from ingest.jsonl import LineError, read_jsonl_records
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from schemas.validation import Reason
from streams.coordinates import Coordinates
from streams.validate import Accepted, Rejected, Validator

pytestmark = pytest.mark.unit

_NUM = r"\d+(?:\.\d+)?"
_CALC = re.compile(rf"({_NUM}(?: [+−×÷] {_NUM})+) = ({_NUM})")


@cache
def _events(count: int, seed: int, share: float) -> tuple:
    return tuple(generate_events(count, seed, share))


@cache
def _codec() -> AvroCodec:
    return AvroCodec(default_registry())


def _evaluate(expr: str) -> Decimal:
    python = re.sub(_NUM, lambda m: f"Decimal('{m.group(0)}')", expr)
    python = python.replace("×", "*").replace("÷", "/").replace("−", "-")
    return eval(python, {"Decimal": Decimal})  # noqa: S307 - digits and operators only


def _message_bytes(event) -> bytes:
    if event.payload is not None:
        return event.payload
    return _codec().encode(event.record, "Trace", event.schema_version)


def test_same_seed_gives_identical_events():
    a = list(generate_events(300, seed=42, broken_share=0.2))
    b = list(generate_events(300, seed=42, broken_share=0.2))
    assert a == b
    assert [e.payload for e in a] == [e.payload for e in b]
    assert [_message_bytes(e) for e in a] == [_message_bytes(e) for e in b]


def test_different_seed_gives_different_events():
    a = list(generate_events(50, seed=1))
    b = list(generate_events(50, seed=2))
    assert {e.trace_id for e in a}.isdisjoint({e.trace_id for e in b})
    prompts_a = [e.record["prompt"] for e in a if e.record]
    prompts_b = [e.record["prompt"] for e in b if e.record]
    assert prompts_a != prompts_b


def test_shorter_stream_is_a_prefix_and_events_stand_alone():
    long = list(generate_events(120, seed=9))
    assert list(generate_events(40, seed=9)) == long[:40]
    assert generate_event(9, 77) == long[77]


def test_ids_and_times_come_from_seed_and_index():
    events = list(generate_events(100, seed=5, broken_share=0.0))
    assert len({e.trace_id for e in events}) == 100
    for n, e in enumerate(events):
        assert e.record["trace_id"] == e.trace_id
        assert (e.record["created_at"] - BASE_TIME).total_seconds() == n
        assert e.record["created_at"].tzinfo is not None


def test_valid_traces_have_the_promised_shape():
    events = [e for e in _events(3000, 7, 0.05) if e.expected_reason is None]
    sources = Counter(e.record["source"] for e in events)
    versions = Counter(e.schema_version for e in events)
    difficulties = Counter(e.record["meta"]["difficulty"] for e in events)
    topics = Counter(e.record["meta"]["topic"] for e in events)
    assert set(sources) == set(SOURCES)
    assert versions[1] > 300 and versions[2] > 300
    assert set(difficulties) == {"easy", "medium", "hard"}
    assert len(topics) >= 6
    assert any(e.record["score"] is None for e in events)
    assert any(e.record["score"] is not None for e in events)
    for e in events:
        rec = e.record
        assert 3 <= len(rec["steps"]) <= 12
        assert [s["i"] for s in rec["steps"]] == list(range(len(rec["steps"])))
        assert {s["type"] for s in rec["steps"]} <= set(STEP_TYPES)
        assert rec["steps"][-1]["type"] == "conclude"
        assert all(isinstance(v, str) for v in rec["meta"].values())
        assert ("model" in rec) == (e.schema_version == 2)


def test_every_calculation_and_final_answer_is_correct():
    events = [e for e in _events(3000, 7, 0.05) if e.expected_reason is None]
    for e in events:
        rec = e.record
        last = None
        for step in rec["steps"]:
            for expr, result in _CALC.findall(step["content"]):
                assert _evaluate(expr) == Decimal(result), (e.trace_id, step["content"])
                if step["type"] == "calculate":
                    last = Decimal(result)
        assert last is not None, e.trace_id
        answer = rec["final_answer"]
        assert re.fullmatch(r"\d+(\.\d*[1-9])?", answer), answer  # plain number, no trailing 0
        assert Decimal(answer) == last, (e.trace_id, answer, last)
        assert rec["steps"][-1]["content"].endswith(f"Final answer: {answer}")


def test_average_valid_trace_is_about_two_kilobytes():
    events = [e for e in _events(3000, 7, 0.05) if e.expected_reason is None]
    avro = mean(len(_message_bytes(e)) for e in events)
    assert 1700 <= avro <= 2500, avro


def test_share_of_broken_events_matches_broken_share():
    events = _events(3000, 7, 0.05)
    share = sum(e.expected_reason is not None for e in events) / len(events)
    assert share == pytest.approx(0.05, abs=0.015)
    assert all(e.expected_reason is None for e in generate_events(200, seed=7, broken_share=0.0))
    assert all(e.expected_reason for e in generate_events(50, seed=7, broken_share=1.0))


def test_every_breakage_kind_appears_and_is_a_reason_code():
    events = _events(3000, 3, 0.5)
    kinds = Counter(e.expected_reason for e in events if e.expected_reason)
    assert set(kinds) == {k.value for k in Breakage}
    assert {k.value for k in Breakage} <= {r.value for r in Reason}
    for e in events:
        if e.expected_reason in PAYLOAD_KINDS:
            assert e.payload is not None and e.record is None and e.schema_version is None
        elif e.expected_reason is not None:
            assert e.record is not None and e.payload is None and e.schema_version in (1, 2)


def test_validator_dead_letters_each_breakage_with_its_reason():
    """The validate stage, run on the exact bytes the producer would send."""
    validator = Validator(_codec(), max_event_bytes=1024 * 1024)
    at = Coordinates("traces.raw", 0, 0)
    seen = Counter()
    for e in _events(3000, 3, 0.5):
        outcome = validator(_message_bytes(e), e.trace_id.encode(), at)
        if e.expected_reason is None:
            assert isinstance(outcome, Accepted), e.trace_id
        else:
            assert isinstance(outcome, Rejected), (e.trace_id, e.expected_reason)
            assert outcome.reason == e.expected_reason
            seen[outcome.reason] += 1
    assert set(seen) == {k.value for k in Breakage}


def test_too_large_events_only_break_the_size_rule():
    big = [e for e in _events(3000, 3, 0.5) if e.expected_reason == Breakage.EVENT_TOO_LARGE]
    assert big
    for e in big:
        assert len(_message_bytes(e)) > 1024 * 1024
        assert len(e.record["steps"]) <= 1000
        assert max(len(s["content"]) for s in e.record["steps"]) <= 20_000


def _now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_jsonl_lines_round_trip_or_fail_at_publish_as_declared(tmp_path):
    events = _events(3000, 3, 0.5)[:600]
    path = tmp_path / "traces.jsonl"
    with path.open("w", encoding="utf-8") as fp:
        summary = write_jsonl(events, fp)
    assert summary.lines == len(events)
    assert summary.publish_rejects.keys() == {"not_json", "invalid_shape"}
    by_line = dict(read_jsonl_records(path, _now))
    assert len(by_line) == len(events)
    rejected = Counter()
    for n, e in enumerate(events, 1):
        _, reason, at_publish = jsonl_line(e)
        item = by_line[n]
        if at_publish:
            assert isinstance(item, LineError) and item.reason == reason
            assert item.message.startswith(f"line {n}")
            rejected[reason] += 1
        else:
            assert isinstance(item, dict), item
            assert item["trace_id"] == e.trace_id
            assert item["steps"] == e.record["steps"]
            assert item["created_at"] == e.record["created_at"]
            assert item["final_answer"] == e.record["final_answer"]
            assert item.get("model") == e.record.get("model")
    assert dict(rejected) == summary.publish_rejects
    valid = sum(1 for e in events if e.expected_reason is None)
    assert summary.valid == valid
    assert sum(summary.dead_letters.values()) + valid + sum(rejected.values()) == len(events)


def test_jsonl_valid_lines_are_plain_json_with_iso_times():
    e = next(e for e in generate_events(20, seed=1, broken_share=0.0))
    fp = io.StringIO()
    write_jsonl([e], fp)
    obj = json.loads(fp.getvalue())
    assert obj["created_at"] == "2025-01-01T00:00:00Z"
    assert obj["trace_id"] == e.trace_id


# --- kind "arith": short column-arithmetic traces ------------------------------------

_ARITH_PROMPT = re.compile(r"What is (\d+) ([+-]) (\d+)\?")
_ARITH_CALC = re.compile(r"^(ones|tens): (\d+(?: [+-] \d+)+) = (\d+)$")


def test_arith_stream_is_deterministic_and_its_own():
    a = list(generate_events(200, seed=4, broken_share=0.1, kind="arith"))
    assert a == list(generate_events(200, seed=4, broken_share=0.1, kind="arith"))
    assert list(generate_events(50, seed=4, broken_share=0.1, kind="arith")) == a[:50]
    assert generate_event(4, 123, 0.1, kind="arith") == a[123]
    other_seed = list(generate_events(200, seed=5, broken_share=0.1, kind="arith"))
    assert [e.record and e.record["prompt"] for e in a] != [e.record and e.record["prompt"] for e in other_seed]
    word = {e.trace_id for e in generate_events(200, seed=4)}
    assert word.isdisjoint(e.trace_id for e in a)
    assert len({e.trace_id for e in a}) == 200
    with pytest.raises(ValueError, match="kind"):
        list(generate_events(1, seed=4, kind="poetry"))


def test_arith_traces_are_correct_column_arithmetic():
    events = list(generate_events(2000, seed=8, broken_share=0.0, kind="arith"))
    ops = Counter()
    for e in events:
        rec = e.record
        a, op, b = _ARITH_PROMPT.fullmatch(rec["prompt"]).groups()
        ops[op] += 1
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert expected >= 0
        assert rec["final_answer"] == str(expected)
        assert [(s["i"], s["type"]) for s in rec["steps"]] == [(0, "calculate"), (1, "calculate")]
        (col1, expr1, ones), (col2, expr2, tens) = (_ARITH_CALC.fullmatch(s["content"]).groups()
                                                    for s in rec["steps"])
        assert (col1, col2) == ("ones", "tens")
        assert _evaluate(expr1) == int(ones) and _evaluate(expr2) == int(tens)
        # the digits worked are the operands' own, and the columns compose to the answer
        assert expr1.split(f" {op} ")[1] == b[1] and expr1.split(f" {op} ")[0][-1] == a[1]
        assert expr2.split(f" {op} ")[:2] == [a[0], b[0]]
        assert int(tens) * 10 + int(ones) % 10 == expected
        assert rec["source"] == "arith-synth" and rec["meta"]["topic"] == "arithmetic"
        assert e.schema_version == 1 and "model" not in rec
    assert ops["+"] > 800 and ops["-"] > 800
    assert len({e.record["final_answer"] for e in events}) > 150


def test_arith_events_pass_validation_and_breakages_keep_their_reasons():
    validator = Validator(_codec(), max_event_bytes=1024 * 1024)
    at = Coordinates("traces.raw", 0, 0)
    reasons = Counter()
    for e in generate_events(1500, seed=2, broken_share=0.3, kind="arith"):
        outcome = validator(_message_bytes(e), e.trace_id.encode(), at)
        if e.expected_reason is None:
            assert isinstance(outcome, Accepted), e.trace_id
        else:
            assert isinstance(outcome, Rejected) and outcome.reason == e.expected_reason
            reasons[outcome.reason] += 1
    assert len(reasons) >= 6


def test_arith_examples_fit_a_short_context_answer_included():
    """Rendered as the trainer renders them, every example fits 160 tokens with ``<answer>`` whole."""
    from trainer.data import example_from_record
    from trainer.tokenizer import decode, encode_example

    sizes = []
    for e in generate_events(2000, seed=6, broken_share=0.0, kind="arith"):
        ex = example_from_record(e.record)
        tokens, mask = encode_example(ex.prompt, ex.completion, 160)
        assert decode(tokens[mask == 1]) == ex.completion
        assert ex.completion.endswith(f"<answer>{ex.final_answer}</answer>")
        sizes.append(len(ex.prompt.encode()) + len(ex.completion.encode()) + 3)
    assert max(sizes) <= 160
