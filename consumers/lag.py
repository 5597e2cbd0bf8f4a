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

from consumers.errors import UnknownGroupError, UnknownTopicError

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


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """High watermarks of every partition of ``topics`` (missing topics are left out)."""
    partitions = await topic_partitions(bootstrap, topics)
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def topic_partitions(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the existing ones among ``topics``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """Offsets ``group`` has committed, per partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for attempt in range(_COORDINATOR_ATTEMPTS):
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except KafkaError as exc:
                # The broker creates its offsets topic lazily; until then no coordinator answers.
                if not exc.retriable or attempt == _COORDINATOR_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics``, sorted by topic and partition."""
    topics = list(topics)
    ends = await end_offsets(bootstrap, topics)
    committed = await committed_offsets(bootstrap, group)
    return sorted(
        (PartitionLag(group, tp.topic, tp.partition, committed.get(tp, 0), end) for tp, end in ends.items()),
        key=lambda lag: (lag.topic, lag.partition),
    )


async def consumer_groups(bootstrap: str) -> list[str]:
    """Every consumer group the cluster knows: with members, or with committed offsets it still keeps."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted({group[0] for group in await admin.list_consumer_groups()})
    finally:
        await admin.close()


async def known_group_lag(bootstrap: str, group: str, topics: Iterable[str] | None = None) -> list[PartitionLag]:
    """Lag of a group that must exist, on ``topics`` or, by default, on every topic it committed offsets on.

    Raises:
        UnknownGroupError: the cluster does not know ``group`` (the message lists the groups it knows).
        UnknownTopicError: one of the ``topics`` given does not exist.
    """
    groups = await consumer_groups(bootstrap)
    if group not in groups:
        shown = ", ".join(groups[:20]) + (" …" if len(groups) > 20 else "") if groups else "none"
        raise UnknownGroupError(
            f"consumer group {group!r} is not known to the cluster at {bootstrap}: it has no members and no "
            f"committed offsets (groups: {shown}); check the name"
        )
    if topics is None:
        topics = sorted({tp.topic for tp in await committed_offsets(bootstrap, group)})
    else:
        topics = list(topics)
        existing = {tp.topic for tp in await topic_partitions(bootstrap, topics)}
        missing = [topic for topic in topics if topic not in existing]
        if missing:
            raise UnknownTopicError(f"topic {', '.join(missing)} does not exist on {bootstrap}; check the name")
    return await group_lag(bootstrap, group, topics)
