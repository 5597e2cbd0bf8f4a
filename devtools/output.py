"""Generated events on their way out: JSON lines for ``publish``, or straight to Kafka.

How each breakage looks as a JSON line is described in ``devtools.generator``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from devtools.base import GeneratedEvent, record_to_json
from devtools.breakage import Breakage

if TYPE_CHECKING:
    from ingest.producer import DeliveryReport, TraceProducer


@dataclass(frozen=True)
class JsonlWriteSummary:
    """What ``write_jsonl`` wrote and what should become of each line.

    ``publish_rejects``: lines ``publish`` refuses (reason → count);
    ``dead_letters``: lines that publish but the validator dead-letters.
    """

    lines: int
    valid: int
    publish_rejects: dict[str, int]
    dead_letters: dict[str, int]


def jsonl_line(event: GeneratedEvent) -> tuple[str, str | None, bool]:
    """One JSONL line for ``event``: (text without newline, expected reason, rejected at publish)."""
    if event.record is not None:
        line = json.dumps(record_to_json(event.record), ensure_ascii=False)
        return line, event.expected_reason, False
    # Payload breakages have no JSON form: use their JSON-level counterparts.
    if event.source_record is None:
        raise ValueError("a payload event without source_record has no JSONL form")
    rng = random.Random(f"tracestream-jsonl:{event.trace_id}")
    full = record_to_json(event.source_record)
    text = json.dumps(full, ensure_ascii=False)
    if event.expected_reason == Breakage.UNKNOWN_SCHEMA:
        other = {
            "id": full["trace_id"],
            "question": full["prompt"],
            "reasoning": [s["content"] for s in full["steps"]],
            "answer": full["final_answer"],
        }
        return json.dumps(other, ensure_ascii=False), "invalid_shape", True
    if event.expected_reason == Breakage.CORRUPT_AVRO:
        cut = text.index('", "', rng.randrange(len(text) // 3, len(text) // 2))
        return text[: cut + 1] + text[cut + 2 :], "not_json", True
    # not_avro: cut off inside the prompt string.
    start = text.index('"prompt": "') + len('"prompt": "')
    return text[: start + rng.randint(3, 40)], "not_json", True


def write_jsonl(events: Iterable[GeneratedEvent], fp: IO[str]) -> JsonlWriteSummary:
    """Write one JSON object per line (see the module doc for how breakages appear).

    ``fp`` is a text file opened with ``encoding="utf-8"`` (lines are not ASCII-escaped).
    """
    lines = valid = 0
    rejects: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for event in events:
        text, reason, rejected = jsonl_line(event)
        fp.write(text)
        fp.write("\n")
        lines += 1
        if reason is None:
            valid += 1
        elif rejected:
            rejects[reason] += 1
        else:
            dead[reason] += 1
    return JsonlWriteSummary(lines, valid, dict(rejects), dict(dead))


async def publish_generated(producer: TraceProducer, events: Iterable[GeneratedEvent]) -> DeliveryReport:
    """Publish events as they are meant to arrive: records at their schema version, payloads as bytes."""
    for event in events:
        if event.payload is not None:
            await producer.publish_bytes(event.payload, event.trace_id.encode() if event.trace_id else None)
        else:
            await producer.publish(event.record, schema_version=event.schema_version)
    return await producer.flush()
