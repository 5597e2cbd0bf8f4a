"""The one dataset reader: a manifest's records selected by its filter and split, hashed as they pass.

Creating a dataset (``dataset.snapshot``: fills in the counts and the hash),
exporting it (``dataset.export``) and training on it (``trainer.data``) all
read through ``DatasetRead``, so "which records, in which split, hashing to
what" is decided in one place, and ``mismatch`` is the one check of a read
against the manifest's ``content_sha256``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from dataset.hashing import Canonical, ContentHasher
from dataset.manifest import Manifest
from dataset.select import selector
from deploy.kafka_clients import KafkaClients
from kafkalog.log import paused_gc
from kafkalog.ranges import read_range_batches
from schemas.codec import AvroCodec

Selected = tuple[str, Canonical, Mapping[str, Any]]
"""A record in the dataset: its split (``train``/``eval``), its canonical form (the bytes hashed), the record."""


class DatasetRead:
    """One pass over a manifest's records, in (partition, offset) order; the hash covers every split."""

    def __init__(self, manifest: Manifest, hasher: ContentHasher | None = None) -> None:
        self.manifest = manifest
        self.hasher = hasher or ContentHasher(manifest.hash_format)  # the rule the manifest was hashed by
        self.counts = {"train": 0, "eval": 0}
        self._which = selector(manifest.filter, manifest.split)

    def select(self, batch: list[dict]) -> list[Selected]:
        """The records of ``batch`` that are in the dataset, each hashed (serialized once) and counted."""
        which, add, counts = self._which, self.hasher.add, self.counts
        out: list[Selected] = []
        with paused_gc():  # acyclic values only, no await
            for record in batch:
                split = which(record)
                if split is not None:
                    out.append((split, add(record), record))
                    counts[split] += 1
        return out

    @property
    def content_sha256(self) -> str:
        return self.hasher.hexdigest()

    def counted(self) -> Manifest:
        """The manifest with what this read found: counts and ``content_sha256``."""
        return dataclasses.replace(
            self.manifest, record_count=self.hasher.count, train_count=self.counts["train"],
            eval_count=self.counts["eval"], content_sha256=self.content_sha256,
        )

    def mismatch(self, source: str) -> str | None:
        """Why this read is not the manifest's dataset (None when it hashes as the manifest says)."""
        return content_mismatch(self.manifest, self.content_sha256, source)


def content_mismatch(manifest: Manifest, content_sha256: str, source: str) -> str | None:
    """The message for records from ``source`` that hash to ``content_sha256`` when the manifest says otherwise."""
    if not manifest.content_sha256 or content_sha256 == manifest.content_sha256:
        return None
    return (f"dataset {manifest.name}@{manifest.version} read from {source} hashes to content_sha256 "
            f"{content_sha256}, its manifest says {manifest.content_sha256}: the records under its ranges "
            "changed; create a new dataset version")


async def replay(read: DatasetRead, kafka: KafkaClients, codec: AvroCodec) -> AsyncIterator[list[Selected]]:
    """``read.select`` over the manifest's ranges replayed from Kafka, a batch at a time."""
    async for batch in read_range_batches(kafka, read.manifest.ranges, codec=codec):
        yield read.select(batch)
