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

from consumers.lag import committed_offsets, end_offsets
from deploy.settings import Settings
from streams.topics import materialize_group, validate_group

log = logging.getLogger(__name__)


async def wait_until_committed(
    bootstrap: str, group: str, targets: dict[TopicPartition, int], *, poll_seconds: float = 0.25
) -> None:
    """Return once ``group`` has committed at least ``targets`` on every partition."""
    while True:
        committed = await committed_offsets(bootstrap, group)
        behind = {tp: end for tp, end in targets.items() if committed.get(tp, 0) < end}
        if not behind:
            return
        log.debug("waiting for %s on %s", group, behind)
        await asyncio.sleep(poll_seconds)


async def wait_until_caught_up(settings: Settings, bootstrap: str, *, poll_seconds: float = 0.25) -> None:
    """Block until every processor has committed what was in the log when this was called."""
    topics = settings.topics
    raw_targets = await end_offsets(bootstrap, [topics.raw])
    await wait_until_committed(bootstrap, validate_group(settings), raw_targets, poll_seconds=poll_seconds)
    for outputs in ([topics.valid, topics.dlq, topics.datasets, topics.runs], [topics.dlq]):
        targets = await end_offsets(bootstrap, outputs)
        await wait_until_committed(bootstrap, materialize_group(settings), targets, poll_seconds=poll_seconds)
