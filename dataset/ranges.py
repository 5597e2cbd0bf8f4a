"""Offset ranges: what a dataset is made of, parsed from JSON or planned from watermarks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from dataset.checks import _INT32_MAX, DEFAULT_TOPIC, _int
from schemas.errors import InvalidDatasetRequest

if TYPE_CHECKING:
    from dataset.manifest import Manifest

# --- offset ranges ----------------------------------------------------------


class OffsetRange(NamedTuple):
    """Offsets ``[start, end)`` of one partition. ``len()`` is the tuple's; use ``size``."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, offset: object) -> bool:  # type: ignore[override]
        return isinstance(offset, int) and self.start <= offset < self.end

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@[{self.start}, {self.end})"


def _check_range(r: OffsetRange) -> OffsetRange:
    _int(f"partition of {r}", r.partition)
    _int(f"start offset of {r}", r.start, 0, 2**63 - 1)
    _int(f"end offset of {r}", r.end, 0, 2**63 - 1)
    if r.start > r.end:
        raise InvalidDatasetRequest(
            f"offset range {r} starts after it ends; give [start, end) with start <= end"
        )
    return r


def parse_offsets_json(text: str, topic: str = DEFAULT_TOPIC) -> tuple[OffsetRange, ...]:
    """``{"0": [0, 100], "1": [5, 50]}`` → ranges sorted by partition (end exclusive)."""
    example = 'e.g. {"0": [0, 100], "1": [5, 50]} for partition: [start, end)'

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise InvalidDatasetRequest(
                    f"offsets JSON names partition {key!r} twice; {example}"
                )
            seen[key] = value
        return seen

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidDatasetRequest(f"offsets are not valid JSON ({exc}); {example}") from None
    if not isinstance(obj, dict) or not obj:
        raise InvalidDatasetRequest(f"offsets must be a non-empty JSON object; {example}")
    ranges: dict[int, OffsetRange] = {}
    for key, value in obj.items():
        if not re.fullmatch(r"[0-9]+", key) or int(key) > _INT32_MAX:
            raise InvalidDatasetRequest(
                f"offsets key {key!r} is not a partition number (0 or more); {example}"
            )
        partition = int(key)
        if partition in ranges:
            raise InvalidDatasetRequest(
                f"offsets JSON names partition {partition} twice; {example}"
            )
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
        ):
            raise InvalidDatasetRequest(
                f"offsets for partition {partition} must be [start, end] integers, "
                f"got {json.dumps(value)}; {example}"
            )
        start, end = value
        if start < 0 or end < 0:
            raise InvalidDatasetRequest(
                f"offsets for partition {partition} are negative ({start}, {end}); "
                "Kafka offsets start at 0"
            )
        ranges[partition] = _check_range(OffsetRange(topic, partition, start, end))
    return tuple(ranges[p] for p in sorted(ranges))


def plan_ranges(
    topic: str,
    ends: Mapping[int, int],
    *,
    parent: Manifest | None = None,
    starts: Mapping[int, int] | None = None,
) -> tuple[OffsetRange, ...]:
    """The ranges of a new snapshot: up to ``ends`` (high watermarks), from the parent's ends.

    Without a parent a partition starts at ``starts`` (the log start offsets)
    or 0. With one, every partition starts where the parent's range ended,
    which is what "everything since parent" means. A high watermark below the
    parent's end, or a parent offset already deleted by retention, is refused:
    the dataset could not be rebuilt.
    """
    starts = starts or {}
    parent_ends: dict[int, int] = {}
    if parent is not None:
        if parent.topic != topic:
            raise InvalidDatasetRequest(
                f"parent {parent.ref} points into {parent.topic!r}, not {topic!r}; "
                "a child dataset must use its parent's topic"
            )
        parent_ends = {r.partition: r.end for r in parent.ranges}
        missing = sorted(set(parent_ends) - set(ends))
        if missing:
            raise InvalidDatasetRequest(
                f"partitions {missing} of parent {parent.ref} are missing from {topic!r}; "
                "the topic was recreated, so start a new dataset without a parent"
            )
    out = []
    for partition in sorted(ends):
        end = ends[partition]
        log_start = starts.get(partition, 0)
        start = parent_ends.get(partition, log_start)
        if end < start:
            raise InvalidDatasetRequest(
                f"{topic}[{partition}] ends at {end}, before the parent's end {start}; "
                "the topic was recreated, so start a new dataset without a parent"
            )
        if start < log_start and end > start:
            raise InvalidDatasetRequest(
                f"{topic}[{partition}] offsets [{start}, {log_start}) were deleted by retention; "
                "the dataset cannot be rebuilt from the log (keep retention.ms=-1 on this topic)"
            )
        out.append(_check_range(OffsetRange(topic, partition, start, end)))
    return tuple(out)
