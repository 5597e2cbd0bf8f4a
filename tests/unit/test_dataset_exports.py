"""Export formats: deterministic bytes, step index and type kept, stable ids."""

import io
import json
from datetime import datetime, timezone

import pytest

from dataset.filter import TraceFilter
from dataset.formats import (
    FORMATS,
    export_line,
    export_lines,
    record_id,
    render_completion,
    write_export,
)
from dataset.select import select
from dataset.split import Split
from schemas.errors import InvalidDatasetRequest

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)


def record(offset=140, **overrides):
    r = {
        "topic": "traces.valid",
        "partition": 2,
        "offset": offset,
        "trace_id": f"t-{offset}",
        "trace_version": 1,
        "prompt": "Wie viel ist 2+2?",
        "steps": [
            {"i": 0, "type": "plan", "content": "add the numbers"},
            {"i": 3, "type": "tool_call", "content": "calc(2+2)  \n"},
        ],
        "final_answer": "4 ✓",
        "meta": {"lang": "de"},
        "source": "gen",
        "created_at": T0,
        "score": None,
        "model": None,
    }
    r.update(overrides)
    return r


COMPLETION = (
    '<step i="0" type="plan">add the numbers</step>\n'
    '<step i="3" type="tool_call">calc(2+2)  \n</step>\n'
    "<answer>4 ✓</answer>"
)


def test_record_id():
    assert record_id(record()) == "traces.valid/2/140"


def test_render_completion():
    assert render_completion(record()["steps"], "4 ✓") == COMPLETION


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_step_index_and_type(fmt):
    obj = json.loads(export_line(fmt, "train", record()))
    assert obj["id"] == "traces.valid/2/140" and obj["split"] == "train"
    assert obj["steps"] == [
        {"i": 0, "type": "plan", "content": "add the numbers"},
        {"i": 3, "type": "tool_call", "content": "calc(2+2)  \n"},
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_byte_identical_across_calls(fmt):
    a = export_line(fmt, "eval", record())
    b = export_line(fmt, "eval", dict(reversed(list(record().items()))))
    assert a == b
    assert a.endswith(b"\n") and a.count(b"\n") == 1
    assert "✓".encode() in a  # UTF-8, not \u escapes
    compact = json.dumps(json.loads(a), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert a == compact.encode("utf-8") + b"\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_steps_come_out_sorted_by_index(fmt):
    shuffled = record(steps=list(reversed(record()["steps"])))
    assert export_line(fmt, "train", shuffled) == export_line(fmt, "train", record())


def test_trace_format_is_the_canonical_record():
    obj = json.loads(export_line("trace", "train", record()))
    assert obj["created_at"] == "2024-05-01T12:00:00.250Z"
    assert obj["score"] is None and obj["model"] is None
    assert set(obj) == {
        "id", "split", "topic", "partition", "offset", "trace_id", "trace_version", "prompt",
        "steps", "final_answer", "meta", "source", "created_at", "score", "model",
    }


def test_tunix_sft_format():
    obj = json.loads(export_line("tunix_sft", "train", record()))
    assert obj == {
        "id": "traces.valid/2/140",
        "split": "train",
        "prompt": "Wie viel ist 2+2?",
        "completion": COMPLETION,
        "steps": record()["steps"],
        "meta": {"lang": "de"},
        "source": "gen",
    }


def test_training_example_format():
    obj = json.loads(export_line("training_example", "eval", record()))
    assert obj == {
        "id": "traces.valid/2/140",
        "split": "eval",
        "messages": [
            {"role": "user", "content": "Wie viel ist 2+2?"},
            {"role": "assistant", "content": COMPLETION},
        ],
        "steps": record()["steps"],
        "final_answer": "4 ✓",
        "source": "gen",
        "trace_id": "t-140",
        "metadata": {"lang": "de"},
    }


def test_unknown_format_lists_the_formats():
    with pytest.raises(InvalidDatasetRequest, match="trace, tunix_sft, training_example"):
        export_line("parquet", "train", record())
    with pytest.raises(InvalidDatasetRequest, match="tunix_sft"):
        export_lines("csv", [])


def test_unknown_split_is_refused():
    with pytest.raises(InvalidDatasetRequest, match="train, eval"):
        export_line("trace", "all", record())


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_file_is_deterministic(fmt):
    records = [record(offset=o) for o in range(300)]

    def build():
        out = io.BytesIO()
        n = write_export(fmt, select(records, TraceFilter(), Split(0.2, "s"), "all"), out)
        return n, out.getvalue()

    (n1, a), (n2, b) = build(), build()
    assert n1 == n2 == 300 and a == b
    lines = a.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"traces.valid/2/{o}" for o in range(300)]
    assert {json.loads(line)["split"] for line in lines} == {"train", "eval"}
