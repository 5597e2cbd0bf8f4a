"""Which offsets a subscriber may commit: only those of records whose handling finished.

Pure bookkeeping, kept apart from the consumer so the at-least-once rule can
be tested without a broker. One record is "in flight" at a time (handed to
the caller, body not finished); it becomes handled when the caller asks for
the next record, or when the subscription closes cleanly. The offset to
commit for a partition is the last handled offset + 1 (Kafka's "next offset
to read").
"""

from __future__ import annotations

from aiokafka import TopicPartition


class HandledOffsets:
    """Per partition, the next offset to commit; and the one record in flight."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, int] = {}
        self.in_flight: tuple[TopicPartition, int] | None = None

    def hand_out(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` of ``tp`` was given to the caller; the one before it must be settled first."""
        if self.in_flight is not None:
            raise RuntimeError(f"record {self.in_flight} is still in flight; settle it before handing out another")
        self.in_flight = (tp, offset)

    def handled(self) -> None:
        """The caller finished the record in flight (no-op when none is)."""
        if self.in_flight is not None:
            tp, offset = self.in_flight
            self._pending[tp] = max(self._pending.get(tp, 0), offset + 1)
            self.in_flight = None

    def abandon(self) -> None:
        """The caller's body failed: the record in flight will not be committed."""
        self.in_flight = None

    def take(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now (of ``partitions``, or all) and forget them."""
        if partitions is None:
            taken, self._pending = self._pending, {}
            return taken
        taken = {tp: offset for tp, offset in self._pending.items() if tp in partitions}
        for tp in taken:
            del self._pending[tp]
        return taken

    def in_flight_on(self, partitions: set[TopicPartition]) -> bool:
        return self.in_flight is not None and self.in_flight[0] in partitions

    def __len__(self) -> int:
        return len(self._pending)
