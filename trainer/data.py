"""Training examples from dataset records, tokenized once into fixed-size arrays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from dataset.formats import record_id, render_completion
from dataset.manifest import Manifest
from dataset.reader import DatasetRead, replay
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from trainer.config import ConfigError
from trainer.tokenizer import ByteTokenizer


class Example(NamedTuple):
    """One SFT pair; ``final_answer`` and ``source`` are kept for scoring."""

    prompt: str
    completion: str
    final_answer: str
    source: str
    id: str = ""


def example_from_record(record: Mapping[str, Any]) -> Example:
    """A dataset record (``dataset.hashing``) → Example, completion as ``tunix_sft`` renders it."""
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


def tokenize(examples: Sequence[Example], max_len: int, tokenizer: Any = None) -> dict[str, np.ndarray]:
    """``{"tokens", "loss_mask"}``, int32 arrays of shape ``(len(examples), max_len)``.

    ``tokenizer``: anything with ``encode_example`` (``trainer.hf.HFTokenizer``); default the byte tokenizer.
    """
    return tokenize_counted(examples, max_len, tokenizer)[0]


def tokenize_counted(examples: Sequence[Example], max_len: int,
                     tokenizer: Any = None) -> tuple[dict[str, np.ndarray], int]:
    """``(tokenize's arrays, how many examples the truncation rule cut)``."""
    if tokenizer is None:
        tokenizer = ByteTokenizer()
    encoded = [tokenizer.encode_example(e.prompt, e.completion, max_len) for e in examples]
    if not encoded:
        empty = np.zeros((0, max_len), np.int32)
        return {"tokens": empty, "loss_mask": empty.copy()}, 0
    arrays = {
        "tokens": np.stack([e.tokens for e in encoded]),
        "loss_mask": np.stack([e.loss_mask for e in encoded]),
    }
    return arrays, sum(e.truncated for e in encoded)


async def read_examples(kafka: KafkaClients, manifest: Manifest, codec: AvroCodec) -> tuple[list[Example], list[Example]]:
    """The manifest's records, replayed from Kafka, split into train and eval; checks the content hash.

    Raises:
        ConfigError: the replay does not hash to the manifest's ``content_sha256``.
    """
    read = DatasetRead(manifest)
    split: dict[str, list[Mapping[str, Any]]] = {"train": [], "eval": []}
    async for selected in replay(read, kafka, codec):
        for name, _, record in selected:
            split[name].append(record)
    if (why := read.mismatch("Kafka")) is not None:
        raise ConfigError(why)
    return examples_from_records(split["train"]), examples_from_records(split["eval"])


def no_train_split(manifest: Manifest) -> ConfigError:
    """The error for a dataset whose train split is empty."""
    return ConfigError(
        f"dataset {manifest.name}@{manifest.version} has no records in its train split "
        f"({manifest.record_count} records, {manifest.eval_count} in eval); "
        "create a dataset with a smaller eval share or a wider filter"
    )
