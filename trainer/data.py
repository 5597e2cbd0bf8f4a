"""Training examples from dataset records, tokenized once into fixed-size arrays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from schemas.exports import record_id, render_completion
from trainer.tokenizer import encode_example


class Example(NamedTuple):
    """One SFT pair; ``final_answer`` and ``source`` are kept for scoring."""

    prompt: str
    completion: str
    final_answer: str
    source: str
    id: str = ""


def example_from_record(record: Mapping[str, Any]) -> Example:
    """A dataset record (``schemas.dataset``) → Example, completion as ``tunix_sft`` renders it."""
    steps = sorted(record["steps"], key=lambda s: int(s["i"]))
    rid = record_id(record) if {"topic", "partition", "offset"} <= set(record) else ""
    return Example(
        prompt=record["prompt"],
        completion=render_completion(steps, record["final_answer"]),
        final_answer=record["final_answer"],
        source=record["source"],
        id=rid,
    )


def examples_from_records(records: Iterable[Mapping[str, Any]]) -> list[Example]:
    return [example_from_record(r) for r in records]


def tokenize(examples: Sequence[Example], max_len: int) -> dict[str, np.ndarray]:
    """``{"tokens", "loss_mask"}``, int32 arrays of shape ``(len(examples), max_len)``."""
    pairs = [encode_example(e.prompt, e.completion, max_len) for e in examples]
    if not pairs:
        empty = np.zeros((0, max_len), np.int32)
        return {"tokens": empty, "loss_mask": empty.copy()}
    return {
        "tokens": np.stack([t for t, _ in pairs]),
        "loss_mask": np.stack([m for _, m in pairs]),
    }
