"""Deterministic export formats for dataset records: one JSON object per line.

Each format is a function ``(record, split) -> dict`` over a dataset record
(see ``dataset.hashing``); lines are ``json.dumps`` with sorted keys, no
spaces and UTF-8 text, plus ``\\n``. Nothing depends on time, randomness or
dict order, so the same manifest gives byte-identical files. Lines are
assembled from the record's canonical form (``dataset.hashing.Canonical``),
whose values were serialized once for the content hash: no value is
serialized twice, and the bytes are those of ``json.dumps`` of the format's
dict (``as_trace`` and the others define each format). Every format
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

from dataset.hashing import Canonical, canonical, canonical_record, json_bytes
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
    """The reference serialization of a format's dict (the assembled lines equal it byte for byte)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidDatasetRequest(f"split {split!r} is not one of {', '.join(SPLITS)}")


# Cutting values out of the canonical JSON. It is compact with sorted keys:
#   {"created_at":S,"final_answer":S,"meta":{S:S,...},"model":S|null,"offset":N,"partition":N,
#    "prompt":S,"score":F|null,"source":S,"steps":[{"content":S,"i":N,"type":S},...],"topic":S,
#    "trace_id":S,"trace_version":N}
# Inside a JSON string every '"' is escaped, so ',"' there can only be a trailing comma before the
# closing quote, which a ',' ']' '}' or ':' must follow, never a letter. Hence ',"meta":{' (the one
# object-valued "meta"), '},"model":' (the only object followed by a key: meta's end), ',"steps":['
# and '],"topic":' (the one array) occur once; and after meta's end no object has the scalar keys.
_META, _META_END, _STEPS, _STEPS_END = b',"meta":{', b'},"model":', b',"steps":[', b'],"topic":'


def _values(data: bytes) -> dict[str, bytes]:
    """The JSON of the values the line formats reuse, cut out of the canonical JSON ``data``."""
    fa = data.index(b',"final_answer":') + 16
    meta = data.index(_META, fa)
    meta_end = data.index(_META_END, meta) + 1
    prompt = data.index(b',"prompt":', meta_end)
    score = data.index(b',"score":', prompt)
    source = data.index(b',"source":', score)
    steps = data.index(_STEPS, source)
    steps_end = data.index(_STEPS_END, steps) + 1
    trace_id = data.index(b',"trace_id":', steps_end)
    trace_version = data.index(b',"trace_version":', trace_id)
    return {
        "final_answer": data[fa:meta],
        "meta": data[meta + 8:meta_end],
        "prompt": data[prompt + 10:score],
        "source": data[source + 10:steps],
        "steps": data[steps + 9:steps_end],
        "trace_id": data[trace_id + 12:trace_version],
    }


_SPLIT_JSON = {name: json_bytes(name) for name in SPLITS}


def _id(c: Canonical) -> bytes:
    return json_bytes(record_id(c.record))


def _completion(c: Canonical) -> bytes:
    return json_bytes(render_completion(c.record["steps"], c.record["final_answer"]))


def _line_trace(split: bytes, c: Canonical) -> bytes:
    # The canonical JSON with "id" (before "meta") and "split" (before "steps") put in, keys still sorted.
    data = c.data
    meta, steps = data.index(_META), data.rindex(_STEPS)
    return b"".join((data[:meta], b',"id":', _id(c), data[meta:steps], b',"split":', split, data[steps:], b"\n"))


def _line_tunix_sft(split: bytes, c: Canonical) -> bytes:
    v = _values(c.data)
    return b"".join((
        b'{"completion":', _completion(c), b',"id":', _id(c), b',"meta":', v["meta"], b',"prompt":', v["prompt"],
        b',"source":', v["source"], b',"split":', split, b',"steps":', v["steps"], b"}\n",
    ))


def _line_training_example(split: bytes, c: Canonical) -> bytes:
    v = _values(c.data)
    return b"".join((
        b'{"final_answer":', v["final_answer"], b',"id":', _id(c),
        b',"messages":[{"content":', v["prompt"], b',"role":"user"},{"content":', _completion(c),
        b',"role":"assistant"}],"metadata":', v["meta"], b',"source":', v["source"], b',"split":', split,
        b',"steps":', v["steps"], b',"trace_id":', v["trace_id"], b"}\n",
    ))


_LINES: dict[str, Callable[[bytes, Canonical], bytes]] = {
    "trace": _line_trace,
    "tunix_sft": _line_tunix_sft,
    "training_example": _line_training_example,
}


def line_writer(format: str) -> Callable[[str, Canonical], bytes]:
    """``(split, canonical record) -> line`` for ``format``: what ``export_line`` writes, from values serialized once.

    Raises:
        InvalidDatasetRequest: an unknown format (naming the formats there are) or, when called, split.
    """
    exporter(format)
    build = _LINES[format]

    def line(split: str, c: Canonical) -> bytes:
        split_json = _SPLIT_JSON.get(split)
        if split_json is None:
            _check_split(split)
        return build(split_json, c)

    return line


def export_line(format: str, split: str, record: Mapping[str, Any]) -> bytes:
    """One JSON Lines line (ending in ``\\n``) for ``record`` in ``format``."""
    return line_writer(format)(split, canonical(record))


def export_lines(
    format: str, selected: Iterable[tuple[str, Mapping[str, Any]]]
) -> Iterator[bytes]:
    """Lines for ``(split, record)`` pairs, e.g. straight from ``dataset.select.select``.

    An unknown format is refused here, not at the first record.
    """
    line = line_writer(format)

    def lines() -> Iterator[bytes]:
        for split, record in selected:
            yield line(split, canonical(record))

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

