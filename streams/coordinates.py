"""Where an event sits in the log; every error about an event names it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Coordinates(NamedTuple):
    """The Kafka address of one record."""

    topic: str
    """Topic name."""
    partition: int
    """Partition number."""
    offset: int
    """Offset within the partition."""

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


SOURCE_TOPIC_HEADER = "tracestream-source-topic"
SOURCE_OFFSET_HEADER = "tracestream-source-offset"


def source_headers(at: Coordinates) -> list[tuple[str, bytes]]:
    """Lineage headers for an output record: the topic and offset of the input it was made from."""
    return [(SOURCE_TOPIC_HEADER, at.topic.encode()), (SOURCE_OFFSET_HEADER, str(at.offset).encode())]


def source_offset(headers: Iterable[tuple[str, bytes]] | dict[str, bytes], source_topic: str) -> int | None:
    """The input offset a record was made from, if it came from ``source_topic``."""
    found_topic = found_offset = None
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == SOURCE_TOPIC_HEADER:
            found_topic = value.decode()
        elif name == SOURCE_OFFSET_HEADER:
            found_offset = int(value)
    return found_offset if found_topic == source_topic else None
