"""A warehouse outage mid-stream: the materializer waits, commits nothing unwritten, loses nothing.

The processors run in this process against the real chDB engine; the outage
is played through the warehouse seam: every insert fails as unavailable
while the switch is on.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from consumers.lag import committed_offsets
from deploy.settings import Settings
from streams.catchup import wait_until_caught_up
from streams.generator import generate_events
from streams.topics import materialize_group
from tests.integration.support import expected_outcome, kafka_of, publish, running_processors
from warehouse.client import Warehouse
from warehouse.errors import WarehouseUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class SwitchableOutage(Warehouse):
    """The real warehouse, except that inserts fail while ``down`` is set."""

    down = False
    refused_inserts = 0

    def insert(self, table, columns):
        if SwitchableOutage.down:
            SwitchableOutage.refused_inserts += 1
            raise WarehouseUnavailable("injected outage: the warehouse is down")
        super().insert(table, columns)


async def written_offsets(writer, settings: Settings) -> dict[TopicPartition, int]:
    """Per traces.valid partition: one past the highest offset that has a row."""
    rows = await writer.run(lambda w: w.query(
        f"SELECT partition, max(offset) + 1 FROM `{w.database}`.traces FINAL GROUP BY partition"))
    return {TopicPartition(settings.topics.valid, p): end for p, end in rows}


@pytest.mark.asyncio
async def test_outage_waits_commits_nothing_unwritten_and_loses_nothing(settings: Settings):
    def open_warehouse() -> Warehouse:
        real = Warehouse.connect(settings)
        return SwitchableOutage(real.client, real.database, embedded=real.embedded)

    events = list(generate_events(3000, seed=21, broken_share=0.05))
    valid, _ = expected_outcome(events)
    async with running_processors(settings, open_warehouse) as processors:
        writer, materialize = processors.writer, processors.materialize
        await publish(settings, events[:1000])
        await wait_until_caught_up(settings, kafka_of(settings))
        before = materialize.traces_written
        assert before > 0

        SwitchableOutage.down = True
        try:
            await publish(settings, events[1000:])
            await asyncio.sleep(4)  # several commit intervals while every insert fails
            assert SwitchableOutage.refused_inserts > 0
            assert materialize.traces_written == before
            committed = await committed_offsets(kafka_of(settings), materialize_group(settings))
            written = await written_offsets(writer, settings)
            for tp, end in written.items():
                assert committed.get(tp, 0) <= end, f"{tp} committed past the rows written"
            assert not any(tp.topic == settings.topics.valid and offset > written.get(tp, 0)
                           for tp, offset in committed.items())
        finally:
            SwitchableOutage.down = False

        await asyncio.wait_for(wait_until_caught_up(settings, kafka_of(settings)), 120)
        rows = await writer.run(lambda w: w.query(
            f"SELECT count(), uniqExact(trace_id) FROM `{w.database}`.traces FINAL"))
        assert rows == [(valid, valid)]
        dead = await writer.run(lambda w: w.query(
            f"SELECT countIf(reason = 'warehouse_rejected') FROM `{w.database}`.dlq FINAL"))
        assert dead == [(0,)], "an outage must never dead-letter events"
