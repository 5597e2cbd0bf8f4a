"""Broken events on purpose: each kind is the dead-letter reason validate must give.

Built to cross the validator's own limits (``schemas.validation``), so a
changed limit changes what the generator breaks with it.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from enum import StrEnum
from functools import cache
from typing import Any

from devtools.base import record_to_json, schema_version_of
from devtools.word_problems import GOODS, D, cents, fmt, money
from schemas.validation import (
    MAX_EVENT_BYTES,
    MAX_PROMPT_CHARS,
    MAX_STEP_CHARS,
    MAX_STEPS,
)


class Breakage(StrEnum):
    """Kinds of deliberately broken events; each value is the expected dead-letter reason."""

    NO_STEPS = "no_steps"
    DUPLICATE_STEP_INDEX = "duplicate_step_index"
    STEP_TOO_LONG = "step_too_long"
    PROMPT_TOO_LONG = "prompt_too_long"
    TOO_MANY_STEPS = "too_many_steps"
    EVENT_TOO_LARGE = "event_too_large"
    NOT_AVRO = "not_avro"
    UNKNOWN_SCHEMA = "unknown_schema"
    CORRUPT_AVRO = "corrupt_avro"


PAYLOAD_KINDS = frozenset({Breakage.NOT_AVRO, Breakage.UNKNOWN_SCHEMA, Breakage.CORRUPT_AVRO})
"""Kinds delivered as raw bytes (``GeneratedEvent.payload``); the rest are records."""

# Relative weights among broken events. event_too_large is ~1.15 MB each, so it is rare.
BREAKAGE_WEIGHTS: dict[Breakage, float] = {
    Breakage.NO_STEPS: 1.0,
    Breakage.DUPLICATE_STEP_INDEX: 1.0,
    Breakage.STEP_TOO_LONG: 1.0,
    Breakage.PROMPT_TOO_LONG: 0.5,
    Breakage.TOO_MANY_STEPS: 0.5,
    Breakage.EVENT_TOO_LARGE: 0.05,
    Breakage.NOT_AVRO: 1.0,
    Breakage.UNKNOWN_SCHEMA: 1.0,
    Breakage.CORRUPT_AVRO: 1.0,
}
KINDS = tuple(BREAKAGE_WEIGHTS)
_CUM_WEIGHTS = tuple(
    sum(BREAKAGE_WEIGHTS[k] for k in KINDS[: n + 1]) for n in range(len(KINDS))
)


def _runaway_text(rng: random.Random, record: dict, length: int) -> str:
    """A step that loops re-checking the same arithmetic, ``length`` chars long."""
    calcs = [s["content"] for s in record["steps"] if s["type"] == "calculate"] or [record["prompt"]]
    parts: list[str] = []
    size = 0
    k = 1
    while size < length:
        piece = f"Re-check {k}: {rng.choice(calcs)} "
        parts.append(piece)
        size += len(piece)
        k += 1
    return "".join(parts)[:length]


def break_record(rng: random.Random, record: dict, kind: Breakage) -> dict:
    rec = dict(record)
    steps = [dict(s) for s in record["steps"]]
    if kind is Breakage.NO_STEPS:
        rec["steps"] = []
    elif kind is Breakage.DUPLICATE_STEP_INDEX:
        k = rng.randrange(1, len(steps))
        steps[k]["i"] = steps[k - 1]["i"]
        rec["steps"] = steps
    elif kind is Breakage.STEP_TOO_LONG:
        k = rng.randrange(len(steps))
        steps[k]["content"] = _runaway_text(rng, record, rng.randint(20_500, 26_000))
        rec["steps"] = steps
    elif kind is Breakage.PROMPT_TOO_LONG:
        lines = []
        size = len(record["prompt"])
        n = 1
        while size <= MAX_PROMPT_CHARS + 1000:
            sing, plur, lo, hi = rng.choice(GOODS)
            line = f"Item {n:05d}: {plur}, {money(cents(rng, lo, hi))} each\n"
            lines.append(line)
            size += len(line)
            n += 1
        rec["prompt"] = "Reference price list:\n" + "".join(lines) + "\n" + record["prompt"]
    elif kind is Breakage.TOO_MANY_STEPS:
        n = rng.randint(MAX_STEPS + 1, MAX_STEPS + 100)
        unit = D(rng.randint(25, 400)) / 100
        rec["steps"] = [steps[0]] + [
            {"i": k, "type": "calculate",
             "content": f"Counting item {k}: running total {k} × {fmt(unit)} = {fmt(k * unit)}."}
            for k in range(1, n)
        ]
    elif kind is Breakage.EVENT_TOO_LARGE:
        # Every field rule holds (≤ 1000 steps, each ≤ 20,000 chars), only the size does not.
        target = int(MAX_EVENT_BYTES * 1.1)
        total = len(record["prompt"]) + sum(len(s["content"]) for s in steps)
        k = len(steps)
        while total < target:
            text = _runaway_text(rng, record, rng.randint(18_000, MAX_STEP_CHARS - 100))
            steps.append({"i": k, "type": "check", "content": text})
            total += len(text)
            k += 1
        rec["steps"] = steps
    else:  # pragma: no cover
        raise ValueError(f"{kind} is not a record breakage")
    return rec


_UNREGISTERED_TRACE_V3 = {
    "type": "record",
    "name": "Trace",
    "namespace": "tracestream",
    "fields": [
        {"name": "trace_id", "type": "string"},
        {"name": "trace_version", "type": "int", "default": 1},
        {"name": "prompt", "type": "string"},
        {"name": "steps", "type": {"type": "array", "items": {
            "type": "record", "name": "Step", "fields": [
                {"name": "i", "type": "int"},
                {"name": "type", "type": "string"},
                {"name": "content", "type": "string"},
            ]}}},
        {"name": "final_answer", "type": "string"},
        {"name": "meta", "type": {"type": "map", "values": "string"}},
        {"name": "source", "type": "string"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "score", "type": ["null", "double"], "default": None},
        {"name": "model", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}


@cache
def _unregistered_v3() -> tuple[bytes, Any]:
    import fastavro
    from fastavro.schema import to_parsing_canonical_form

    fp = bytes.fromhex(fastavro.schema.fingerprint(
        to_parsing_canonical_form(_UNREGISTERED_TRACE_V3), "CRC-64-AVRO"))
    return b"\xc3\x01" + fp, fastavro.parse_schema(_UNREGISTERED_TRACE_V3)


@cache
def _trace_codec() -> Any:
    from schemas.codec import AvroCodec
    from schemas.registry import default_registry

    return AvroCodec(default_registry())


def break_payload(rng: random.Random, record: dict, kind: Breakage) -> bytes:
    if kind is Breakage.NOT_AVRO:
        text = json.dumps(record_to_json(record)).encode()
        return gzip.compress(text, mtime=0) if rng.random() < 0.3 else text
    if kind is Breakage.UNKNOWN_SCHEMA:
        from fastavro import schemaless_writer

        header, parsed = _unregistered_v3()
        out = io.BytesIO()
        out.write(header)
        schemaless_writer(out, parsed, {
            **record, "model": record.get("model"),
            "tags": [record["meta"]["topic"], record["meta"]["difficulty"]],
        })
        return out.getvalue()
    if kind is Breakage.CORRUPT_AVRO:
        good = _trace_codec().encode(record, "Trace", schema_version_of(record))
        if rng.random() < 0.7:  # truncated in transit
            return good[: rng.randint(12, len(good) - 1)]
        return good + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
    raise ValueError(f"{kind} is not a payload breakage")  # pragma: no cover


def pick_kind(rng: random.Random) -> Breakage:
    return rng.choices(KINDS, cum_weights=_CUM_WEIGHTS)[0]
