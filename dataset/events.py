"""``datasets.events`` values: created, ready or failed, each with its manifest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from dataset.checks import EVENT_TYPES, _utc_millis
from dataset.manifest import Manifest
from schemas.errors import InvalidDatasetRequest


@dataclass(frozen=True)
class DatasetEvent:
    """One ``datasets.events`` value: created, ready or failed (with ``error``), and a manifest."""

    event_type: Literal["created", "ready", "failed"]
    manifest: Manifest
    at: datetime
    error: str | None = None

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise InvalidDatasetRequest(
                f"dataset event type {self.event_type!r} is not one of {list(EVENT_TYPES)}"
            )
        if (self.event_type == "failed") != (self.error is not None):
            raise InvalidDatasetRequest(
                "a failed dataset event needs an error message, and only a failed one has one"
            )
        if self.event_type == "ready" and not self.manifest.content_sha256:
            raise InvalidDatasetRequest(
                f"ready event for {self.manifest.ref} has no content_sha256; "
                "use Manifest.with_counts"
            )
        object.__setattr__(self, "at", _utc_millis("event at", self.at))

    @property
    def key(self) -> bytes:
        """The Kafka message key: the dataset name."""
        return self.manifest.name.encode("utf-8")

    def to_avro(self) -> dict:
        return {
            "event_type": self.event_type,
            "manifest": self.manifest.to_avro(),
            "error": self.error,
            "at": self.at,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> DatasetEvent:
        return cls(
            event_type=record["event_type"],
            manifest=Manifest.from_avro(record["manifest"]),
            at=record["at"],
            error=record.get("error"),
        )
