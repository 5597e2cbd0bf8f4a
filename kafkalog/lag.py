"""Consumer-group progress read from the broker, the source of truth.

"Has the materializer caught up?" is answered here, from committed offsets
and high watermarks, without touching the warehouse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from deploy.kafka_clients import KafkaClients
from kafkalog.errors import UnknownGroupError, UnknownTopicError

_COORDINATOR_ATTEMPTS = 20


class PartitionLag(NamedTuple):
    """How far one consumer group is behind on one partition."""

    group: str
    """Consumer group id."""
    topic: str
    """Topic name."""
    partition: int
    """Partition number."""
    committed: int
    """Next offset the group will read (0 when it never committed)."""
    end: int
    """High watermark: the offset the next record will get."""

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


class ClusterOffsets:
    """One admin client and one group-less consumer, kept open for code that asks about offsets in a loop.

    Each is started on first use; a wait loop, a health check or a stats
    endpoint reuses them instead of opening a connection per poll.

    >>> async with ClusterOffsets(kafka) as offsets:
    ...     lag = await offsets.group_lag(group, topics)
    """

    def __init__(self, kafka: KafkaClients) -> None:
        self.kafka = kafka
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._starting: asyncio.Lock | None = None  # made in the running loop; concurrent callers start one client

    async def __aenter__(self) -> ClusterOffsets:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if admin is not None:
            await admin.close()
        if consumer is not None:
            await consumer.stop()

    async def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            async with self._lock():
                if self._admin is None:
                    self._admin = await self.kafka.start(self.kafka.admin())
        return self._admin

    async def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            async with self._lock():
                if self._consumer is None:
                    self._consumer = await self.kafka.start(self.kafka.consumer(enable_auto_commit=False))
        return self._consumer

    def _lock(self) -> asyncio.Lock:
        if self._starting is None:
            self._starting = asyncio.Lock()
        return self._starting

    async def topic_partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of the existing ones among ``topics``."""
        described = await (await self.admin()).describe_topics(list(topics))
        return [
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            if topic["error_code"] == 0
            for partition in sorted(topic["partitions"], key=lambda p: p["partition"])
        ]

    async def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """High watermarks of every partition of ``topics`` (missing topics are left out)."""
        partitions = await self.topic_partitions(topics)
        if not partitions:
            return {}
        return await (await self.consumer()).end_offsets(partitions)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """Offsets ``group`` has committed, per partition."""
        admin = await self.admin()
        for attempt in range(_COORDINATOR_ATTEMPTS):
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except KafkaError as exc:
                # The broker creates its offsets topic lazily; until then no coordinator answers.
                if not exc.retriable or attempt == _COORDINATOR_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def group_lag(self, group: str, topics: Iterable[str]) -> list[PartitionLag]:
        """Lag of ``group`` on every partition of ``topics``, sorted by topic and partition."""
        ends = await self.end_offsets(list(topics))
        committed = await self.committed(group)
        return sorted(
            (PartitionLag(group, tp.topic, tp.partition, committed.get(tp, 0), end) for tp, end in ends.items()),
            key=lambda lag: (lag.topic, lag.partition),
        )

    async def groups(self) -> list[str]:
        """Every consumer group the cluster knows: with members, or with committed offsets it still keeps."""
        return sorted({group[0] for group in await (await self.admin()).list_consumer_groups()})


# One-shot forms, for code that asks once; loops should hold a ClusterOffsets.


async def end_offsets(kafka: KafkaClients, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """High watermarks of every partition of ``topics`` (missing topics are left out)."""
    async with ClusterOffsets(kafka) as offsets:
        return await offsets.end_offsets(topics)


async def topic_partitions(kafka: KafkaClients, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the existing ones among ``topics``."""
    async with ClusterOffsets(kafka) as offsets:
        return await offsets.topic_partitions(topics)


async def committed_offsets(kafka: KafkaClients, group: str) -> dict[TopicPartition, int]:
    """Offsets ``group`` has committed, per partition."""
    async with ClusterOffsets(kafka) as offsets:
        return await offsets.committed(group)


async def group_lag(kafka: KafkaClients, group: str, topics: Iterable[str]) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics``, sorted by topic and partition."""
    async with ClusterOffsets(kafka) as offsets:
        return await offsets.group_lag(group, topics)


async def consumer_groups(kafka: KafkaClients) -> list[str]:
    """Every consumer group the cluster knows."""
    async with ClusterOffsets(kafka) as offsets:
        return await offsets.groups()


async def known_group_lag(kafka: KafkaClients, group: str, topics: Iterable[str] | None = None) -> list[PartitionLag]:
    """Lag of a group that must exist, on ``topics`` or, by default, on every topic it committed offsets on.

    Raises:
        UnknownGroupError: the cluster does not know ``group`` (the message lists the groups it knows).
        UnknownTopicError: one of the ``topics`` given does not exist.
    """
    async with ClusterOffsets(kafka) as offsets:
        bootstrap = offsets.kafka.bootstrap
        groups = await offsets.groups()
        if group not in groups:
            shown = ", ".join(groups[:20]) + (" …" if len(groups) > 20 else "") if groups else "none"
            raise UnknownGroupError(
                f"consumer group {group!r} is not known to the cluster at {bootstrap}: it has no members and no "
                f"committed offsets (groups: {shown}); check the name"
            )
        if topics is None:
            topics = sorted({tp.topic for tp in await offsets.committed(group)})
        else:
            topics = list(topics)
            existing = {tp.topic for tp in await offsets.topic_partitions(topics)}
            missing = [topic for topic in topics if topic not in existing]
            if missing:
                raise UnknownTopicError(f"topic {', '.join(missing)} does not exist on {bootstrap}; check the name")
        return await offsets.group_lag(group, topics)
