"""validate restarted after producing output it never committed: nothing is produced twice."""

from __future__ import annotations

import pytest

from consumers.lag import committed_offsets, end_offsets
from deploy.settings import Settings
from streams.catchup import wait_until_committed
from streams.generator import generate_events
from streams.stage import StageRunner
from streams.topics import validate_group
from tests.integration.support import (
    expected_outcome,
    publish,
    running_processors,
    wait_for_async,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(180)]


async def test_restart_skips_everything_already_validated_but_not_committed(settings: Settings, monkeypatch):
    events = list(generate_events(1500, seed=101, broken_share=0.1))
    valid, reasons = expected_outcome(events)
    await publish(settings, events)
    outputs = [settings.topics.valid, settings.topics.dlq]

    async def never_commit(self, offsets):
        return None

    with monkeypatch.context() as patch:
        patch.setattr(StageRunner, "_commit", never_commit)
        async with running_processors(settings) as processors:
            await wait_for_async(lambda: processors.validate.validated + sum(processors.validate.dead_lettered.values())
                                 >= len(events), timeout_s=60, what="validate to handle every event")
    assert await committed_offsets(settings.kafka_bootstrap, validate_group(settings)) == {}
    produced = sum((await end_offsets(settings.kafka_bootstrap, outputs)).values())
    assert produced == len(events)

    async with running_processors(settings) as processors:
        raw_ends = await end_offsets(settings.kafka_bootstrap, [settings.topics.raw])
        await wait_until_committed(settings.kafka_bootstrap, validate_group(settings), raw_ends)
        assert processors.validate.validated == 0 and not processors.validate.dead_lettered
    ends = await end_offsets(settings.kafka_bootstrap, outputs)
    assert sum(n for tp, n in ends.items() if tp.topic == settings.topics.valid) == valid
    assert sum(n for tp, n in ends.items() if tp.topic == settings.topics.dlq) == sum(reasons.values())
