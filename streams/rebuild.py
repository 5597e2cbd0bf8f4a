"""Rebuild the warehouse from the log: the tables are views, the topics are the truth."""

from __future__ import annotations

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.groups import materialize_group
from kafkalog.lag import topic_partitions
from warehouse.client import Warehouse


async def rewind_materializer(settings: Settings, kafka: KafkaClients) -> int:
    """Commit the log start offsets for the materializer's group; returns how many partitions moved.

    Run only while no worker runs: a live member would keep committing its own positions.
    """
    topics = settings.topics
    partitions = await topic_partitions(kafka, list(topics.materialized))
    consumer = await kafka.start(kafka.consumer(group_id=materialize_group(settings), enable_auto_commit=False))
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        await consumer.commit(starts)
    finally:
        await consumer.stop()
    return len(partitions)


def drop_and_recreate_tables(warehouse: Warehouse) -> None:
    warehouse.drop_tables()
    warehouse.ensure_tables()
