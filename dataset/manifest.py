"""The manifest: what a dataset is (exact ranges, filter, split, parent) and what reading it gave."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dataset.checks import _SHA256_HEX, _int, _utc_millis, check_name
from dataset.filter import TraceFilter
from dataset.formats import FORMATS
from dataset.hashing import HASH_FORMAT
from dataset.ranges import OffsetRange, _check_range
from dataset.split import Split
from schemas.errors import InvalidDatasetRequest

# --- the manifest -----------------------------------------------------------


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version by name, e.g. a manifest's parent.

    Version 0 means "the latest ready version" and is only for lookups (the
    CLI's ``NAME`` without ``@VERSION``); a manifest's parent names a real one.
    """

    name: str
    version: int

    def __post_init__(self) -> None:
        check_name(self.name)
        _int("dataset version", self.version, 0)

    @property
    def is_latest(self) -> bool:
        return self.version == 0

    def __str__(self) -> str:
        return f"{self.name}@{'latest' if self.version == 0 else f'v{self.version}'}"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a dataset is: exact offset ranges of one topic, a filter, a split, and the result.

    ``record_count``, ``train_count``, ``eval_count`` and ``content_sha256``
    stay 0/empty until the dataset has been read (the ``ready`` event); use
    ``with_counts``. Construction normalizes (ranges sorted by partition,
    ``created_at`` in UTC milliseconds) and validates, so ``dataclasses.replace``
    keeps every invariant, and ``from_avro(m.to_avro()) == m``.
    """

    name: str
    version: int
    topic: str
    ranges: tuple[OffsetRange, ...]
    filter: TraceFilter = field(default_factory=TraceFilter)
    split: Split = field(default_factory=Split)
    parent: DatasetRef | None = None
    created_at: datetime
    record_count: int = 0
    train_count: int = 0
    eval_count: int = 0
    content_sha256: str = ""
    formats: tuple[str, ...] = ()
    hash_format: int = HASH_FORMAT

    def __post_init__(self) -> None:
        check_name(self.name)
        _int("hash_format", self.hash_format, 1)
        _int("dataset version", self.version, 1)
        if not isinstance(self.topic, str) or not self.topic:
            raise InvalidDatasetRequest(f"manifest topic must be a topic name, got {self.topic!r}")
        ranges = tuple(
            sorted((_check_range(OffsetRange(*r)) for r in self.ranges), key=lambda r: r.partition)
        )
        for r in ranges:
            if r.topic != self.topic:
                raise InvalidDatasetRequest(
                    f"range {r} is not in the manifest's topic {self.topic!r}; "
                    "a dataset reads one topic"
                )
        for a, b in zip(ranges, ranges[1:]):
            if a.partition == b.partition:
                raise InvalidDatasetRequest(
                    f"partition {a.partition} has two ranges ({a} and {b}); give one per partition"
                )
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "created_at", _utc_millis("manifest created_at", self.created_at))
        if not isinstance(self.filter, TraceFilter) or not isinstance(self.split, Split):
            raise InvalidDatasetRequest("manifest filter and split must be TraceFilter and Split")
        if self.parent is not None and not isinstance(self.parent, DatasetRef):
            raise InvalidDatasetRequest(
                f"manifest parent must be a DatasetRef, got {self.parent!r}"
            )
        if self.parent is not None and self.parent.is_latest:
            raise InvalidDatasetRequest(
                f"parent {self.parent} of {self.ref} must name a version; resolve 'latest' "
                "to the parent's actual version before building the manifest"
            )
        if self.parent is not None and self.parent.name == self.name and (
            self.parent.version >= self.version
        ):
            raise InvalidDatasetRequest(
                f"{self.ref} cannot have parent {self.parent}; a parent version must be older"
            )
        for what in ("record_count", "train_count", "eval_count"):
            _int(what, getattr(self, what), 0, 2**63 - 1)
        if self.train_count + self.eval_count != self.record_count:
            raise InvalidDatasetRequest(
                f"train_count {self.train_count} + eval_count {self.eval_count} must equal "
                f"record_count {self.record_count}: every record is in exactly one split"
            )
        if self.content_sha256 and not _SHA256_HEX.match(self.content_sha256):
            raise InvalidDatasetRequest(
                f"content_sha256 {self.content_sha256!r} is not 64 lowercase hex digits"
            )
        formats = tuple(self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or len(set(formats)) != len(formats):
            raise InvalidDatasetRequest(
                f"manifest formats {list(formats)} must be distinct names from {list(FORMATS)}"
            )
        object.__setattr__(self, "formats", formats)

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(self.name, self.version)

    @property
    def total_offsets(self) -> int:
        """Offsets the ranges span; more than ``record_count`` when the filter drops records."""
        return sum(r.size for r in self.ranges)

    def range_for(self, partition: int) -> OffsetRange | None:
        for r in self.ranges:
            if r.partition == partition:
                return r
        return None

    def with_counts(
        self,
        *,
        train_count: int,
        eval_count: int,
        content_sha256: str,
        formats: Sequence[str] | None = None,
    ) -> Manifest:
        """The manifest once read: counts, hash and (optionally) the formats written."""
        return dataclasses.replace(
            self,
            record_count=train_count + eval_count,
            train_count=train_count,
            eval_count=eval_count,
            content_sha256=content_sha256,
            formats=self.formats if formats is None else tuple(formats),
        )

    def to_avro(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "topic": self.topic,
            "ranges": [
                {"partition": r.partition, "start": r.start, "end": r.end} for r in self.ranges
            ],
            "filter": self.filter.to_avro(),
            "split": self.split.to_avro(),
            "parent": (
                None
                if self.parent is None
                else {"name": self.parent.name, "version": self.parent.version}
            ),
            "created_at": self.created_at,
            "record_count": self.record_count,
            "train_count": self.train_count,
            "eval_count": self.eval_count,
            "content_sha256": self.content_sha256,
            "formats": list(self.formats),
            "hash_format": self.hash_format,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Manifest:
        topic = record["topic"]
        parent = record.get("parent")
        return cls(
            name=record["name"],
            version=record["version"],
            topic=topic,
            ranges=tuple(
                OffsetRange(topic, r["partition"], r["start"], r["end"]) for r in record["ranges"]
            ),
            filter=TraceFilter.from_avro(record["filter"]),
            split=Split.from_avro(record["split"]),
            parent=None if parent is None else DatasetRef(parent["name"], parent["version"]),
            created_at=record["created_at"],
            record_count=record["record_count"],
            train_count=record["train_count"],
            eval_count=record["eval_count"],
            content_sha256=record["content_sha256"],
            formats=tuple(record["formats"]),
            hash_format=record.get("hash_format", 1),  # events written before the field: format 1
        )
