"""Decide when a backfill is done, from committed offsets on the broker.

Stage by stage: validate must commit up to the traces.raw high watermarks seen
at start; then the materializers must commit up to the traces.valid and
traces.dlq high watermarks seen once validate is done; then once more for
traces.dlq, which the materializer itself may have written to.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.groups import STAGES, materialize_group, validate_group
from kafkalog.lag import ClusterOffsets

log = logging.getLogger(__name__)


async def wait_until_committed(
    kafka: KafkaClients | ClusterOffsets, group: str, targets: dict[TopicPartition, int], *,
    poll_seconds: float = 0.25,
) -> None:
    """Return once ``group`` has committed at least ``targets`` on every partition (one admin client for every poll)."""
    if not isinstance(kafka, ClusterOffsets):
        async with ClusterOffsets(kafka) as offsets:
            return await wait_until_committed(offsets, group, targets, poll_seconds=poll_seconds)
    while True:
        committed = await kafka.committed(group)
        behind = {tp: end for tp, end in targets.items() if committed.get(tp, 0) < end}
        if not behind:
            return
        log.debug("waiting for %s on %s", group, behind)
        await asyncio.sleep(poll_seconds)


async def wait_until_caught_up(
    settings: Settings, kafka: KafkaClients, *, stages: tuple[str, ...] = STAGES,
    poll_seconds: float = 0.25,
) -> None:
    """Block until every processor of ``stages`` has committed what was in the log when this was called."""
    topics = settings.topics
    async with ClusterOffsets(kafka) as offsets:  # one admin client and consumer for every poll
        if "validate" in stages:
            raw_targets = await offsets.end_offsets([topics.raw])
            await wait_until_committed(offsets, validate_group(settings), raw_targets, poll_seconds=poll_seconds)
        if "materialize" in stages:
            for outputs in (list(topics.materialized), [topics.dlq]):
                targets = await offsets.end_offsets(outputs)
                await wait_until_committed(offsets, materialize_group(settings), targets, poll_seconds=poll_seconds)
