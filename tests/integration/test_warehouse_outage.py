"""A warehouse outage mid-stream: the materializer waits, commits nothing unwritten, loses nothing.

The processors run in this process against the real chDB engine; the outage
is played through the warehouse seam: every insert fails as unavailable
while the switch is on.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.groups import materialize_group
from kafkalog.lag import committed_offsets
from kafkalog.log import read_to_end
from streams.catchup import wait_until_caught_up
from tests.integration.support import (
    expected_outcome,
    kafka_of,
    publish,
    running_processors,
)
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
            rows = await writer.run(lambda w: w.query(
                f"SELECT partition, offset FROM `{w.database}`.traces FINAL"))
            # The committed offset may sit past a transaction marker (validate writes in
            # transactions); every *record* below it must have its row.
            below = {(r.partition, r.offset) for r in await read_to_end(kafka_of(settings), settings.topics.valid)
                     if r.offset < committed.get(TopicPartition(settings.topics.valid, r.partition), 0)}
            missing = below - {(p, o) for p, o in rows}
            assert not missing, f"committed past records with no row: {sorted(missing)[:5]}"
        finally:
            SwitchableOutage.down = False

        await asyncio.wait_for(wait_until_caught_up(settings, kafka_of(settings)), 120)
        rows = await writer.run(lambda w: w.query(
            f"SELECT count(), uniqExact(trace_id) FROM `{w.database}`.traces FINAL"))
        assert rows == [(valid, valid)]
        dead = await writer.run(lambda w: w.query(
            f"SELECT countIf(reason = 'warehouse_rejected') FROM `{w.database}`.dlq FINAL"))
        assert dead == [(0,)], "an outage must never dead-letter events"
