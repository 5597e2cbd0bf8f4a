"""The datasets that exist, read from datasets.events (the log, not the warehouse)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dataset.errors import UnknownDataset
from dataset.events import DatasetEvent
from dataset.manifest import DatasetRef, Manifest
from deploy.kafka_clients import KafkaClients
from kafkalog.log import read_to_end
from schemas.codec import AvroCodec
from schemas.contracts import DATASET_EVENT


@dataclass(frozen=True)
class DatasetEntry:
    """The latest event of one dataset version."""

    manifest: Manifest
    status: str
    """created, ready or failed."""
    error: str | None


class Catalog:
    """Every dataset version announced so far, by (name, version)."""

    def __init__(self, entries: Iterable[DatasetEntry]) -> None:
        self._entries: dict[tuple[str, int], DatasetEntry] = {}
        for entry in entries:  # in log order: a later event replaces an earlier one
            self._entries[(entry.manifest.name, entry.manifest.version)] = entry

    def __iter__(self):
        return iter(sorted(self._entries.values(), key=lambda e: (e.manifest.name, e.manifest.version)))

    def versions(self, name: str) -> list[DatasetEntry]:
        return [e for e in self if e.manifest.name == name]

    def get(self, name: str, version: int | None = None, *, ready: bool = True) -> DatasetEntry:
        """The given version, or the latest ready one.

        Raises:
            UnknownDataset: no such dataset, or (``ready``) it is not ready.
        """
        candidates = [e for e in self.versions(name) if version is None or e.manifest.version == version]
        if ready:
            candidates = [e for e in candidates if e.status == "ready"]
        if not candidates:
            known = ", ".join(sorted({f"{e.manifest.name}@{e.manifest.version} ({e.status})" for e in self})) or "none"
            wanted = f"{name}@{version}" if version is not None else name
            raise UnknownDataset(
                f"no {'ready ' if ready else ''}dataset {wanted}; known: {known}. "
                "Create one with `tracestream dataset create NAME`."
            )
        return candidates[-1]

    def next_version(self, name: str) -> int:
        return max((e.manifest.version for e in self.versions(name)), default=0) + 1

    def exists(self, ref: DatasetRef) -> bool:
        return (ref.name, ref.version) in self._entries


async def load_catalog(kafka: KafkaClients, topic: str, codec: AvroCodec) -> Catalog:
    """Read datasets.events from its beginning up to its current end."""
    entries = []
    for event in await read_to_end(
            kafka, topic, lambda record: DatasetEvent.from_avro(codec.decode_latest(record.value, DATASET_EVENT)[0])):
        entries.append(DatasetEntry(event.manifest, event.event_type, event.error))
    return Catalog(entries)
