"""Read a small topic (datasets.events, runs.events) from its beginning to its current end."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from consumers.lag import topic_partitions


async def read_to_end(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` below the high watermarks seen at the call, partition by partition."""
    partitions = await topic_partitions(bootstrap, [topic])
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
                                retry_backoff_ms=20, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        for tp in partitions:
            consumer.seek(tp, starts[tp])
            while await consumer.position(tp) < ends[tp]:
                batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                records += [record for record in batch if record.offset < ends[tp]]
        return records
    finally:
        await consumer.stop()
