"""Deterministic export formats for dataset records: one JSON object per line.

Each format is a function ``(record, split) -> dict`` over a dataset record
(see ``schemas.dataset``); lines are ``json.dumps`` with sorted keys, no
spaces and UTF-8 text, plus ``\\n``. Nothing depends on time, randomness or
dict order, so the same manifest gives byte-identical files. Every format
keeps each step's index and type, and ids are ``topic/partition/offset``, so
a line points back to the exact Kafka message it came from.

The completion text (``tunix_sft``, ``training_example``) renders the steps
in order, one per line, then the answer::

    <step i="0" type="plan">content</step>
    <step i="1" type="tool_call">content</step>
    <answer>final_answer</answer>

Content, type and answer are inserted verbatim (no escaping, no stripping),
so the model sees exactly what the producer sent; the structured ``steps``
list next to it stays the exact source of truth if content contains tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from schemas.dataset import canonical_record
from schemas.errors import InvalidDatasetRequest

FORMATS = ("trace", "tunix_sft", "training_example")
SPLITS = ("train", "eval")

Exporter = Callable[[Mapping[str, Any], str], dict]


def record_id(record: Mapping[str, Any]) -> str:
    """``traces.valid/2/140``: stable across rebuilds, unique within a topic."""
    return f"{record['topic']}/{int(record['partition'])}/{int(record['offset'])}"


def render_completion(steps: Iterable[Mapping[str, Any]], final_answer: str) -> str:
    """Steps (already sorted by ``i``) as ``<step>`` lines, then the ``<answer>`` line."""
    lines = [f'<step i="{s["i"]}" type="{s["type"]}">{s["content"]}</step>' for s in steps]
    lines.append(f"<answer>{final_answer}</answer>")
    return "\n".join(lines)


def as_trace(record: Mapping[str, Any], split: str) -> dict:
    """The canonical record (every field; ``created_at`` ISO-8601 UTC ms) plus ``id``, ``split``."""
    out = canonical_record(record)
    out["id"] = record_id(record)
    out["split"] = split
    return out


def as_tunix_sft(record: Mapping[str, Any], split: str) -> dict:
    """A prompt/completion text pair for SFT, plus the structured steps and provenance.

    Google Tunix's SFT trainer (``PeftTrainer``) trains on tokenized inputs
    with a loss mask; this is the text pair a tokenizer turns into that,
    the mask covering ``completion`` only.
    """
    c = canonical_record(record)
    return {
        "id": record_id(c),
        "split": split,
        "prompt": c["prompt"],
        "completion": render_completion(c["steps"], c["final_answer"]),
        "steps": c["steps"],
        "meta": c["meta"],
        "source": c["source"],
    }


def as_training_example(record: Mapping[str, Any], split: str) -> dict:
    """A chat-style example: user prompt, assistant completion (rendered as for tunix_sft)."""
    c = canonical_record(record)
    return {
        "id": record_id(c),
        "split": split,
        "messages": [
            {"role": "user", "content": c["prompt"]},
            {"role": "assistant", "content": render_completion(c["steps"], c["final_answer"])},
        ],
        "steps": c["steps"],
        "final_answer": c["final_answer"],
        "source": c["source"],
        "trace_id": c["trace_id"],
        "metadata": c["meta"],
    }


EXPORTERS: dict[str, Exporter] = {
    "trace": as_trace,
    "tunix_sft": as_tunix_sft,
    "training_example": as_training_example,
}


def exporter(format: str) -> Exporter:
    """The function for ``format``, or InvalidDatasetRequest naming the formats there are."""
    try:
        return EXPORTERS[format]
    except (KeyError, TypeError):
        raise InvalidDatasetRequest(
            f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}"
        ) from None


def _line(obj: dict) -> bytes:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidDatasetRequest(f"split {split!r} is not one of {', '.join(SPLITS)}")


def export_line(format: str, split: str, record: Mapping[str, Any]) -> bytes:
    """One JSON Lines line (ending in ``\\n``) for ``record`` in ``format``."""
    convert = exporter(format)
    _check_split(split)
    return _line(convert(record, split))


def export_lines(
    format: str, selected: Iterable[tuple[str, Mapping[str, Any]]]
) -> Iterator[bytes]:
    """Lines for ``(split, record)`` pairs, e.g. straight from ``schemas.dataset.select``.

    An unknown format is refused here, not at the first record.
    """
    convert = exporter(format)

    def lines() -> Iterator[bytes]:
        for split, record in selected:
            _check_split(split)
            yield _line(convert(record, split))

    return lines()


def write_export(
    format: str, selected: Iterable[tuple[str, Mapping[str, Any]]], out: IO[bytes]
) -> int:
    """Write the lines to a binary file; returns how many were written."""
    count = 0
    for line in export_lines(format, selected):
        out.write(line)
        count += 1
    return count
