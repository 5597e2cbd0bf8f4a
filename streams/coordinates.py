"""Where an event sits in the log; every error about an event names it."""

from __future__ import annotations

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
