"""Trace by id through the trace index: the materializer keeps it, the API answers from it.

Real broker, real processors, the real chDB warehouse; the index is a view
of the warehouse's `traces` table and must answer exactly what it would.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from api.app import create_app
from api.queries.traces import by_id
from api.server import serving
from deploy.settings import Settings
from devtools.generator import generate_events
from streams.catchup import wait_until_caught_up
from streams.rebuild import drop_and_recreate_tables
from tests.conftest import free_port
from tests.integration.support import kafka_of, publish, running_processors
from warehouse.client import Warehouse
from warehouse.trace_index import TraceIndex

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]


async def test_a_trace_published_twice_answers_its_later_version_from_the_index(settings: Settings):
    settings = settings.model_copy(update={"api_port": free_port()})
    events = list(generate_events(300, seed=41, broken_share=0.0))
    first = events[17]
    again = dataclasses.replace(first, record={**first.record, "final_answer": "the second version"})
    await publish(settings, events)
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))
        await publish(settings, [again])
        await wait_until_caught_up(settings, kafka_of(settings))
        app = create_app(settings, ingest=False)
        async with serving(app, settings.api_host, settings.api_port) as base_url, \
                httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            answer = await client.get(f"/api/traces/{first.trace_id}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["final_answer"] == "the second version"
            index = app.state.api.reader.trace_index
            assert index is not None and index.get(first.trace_id) == answer.content
            warehouse = Warehouse.connect(settings)
            assert by_id(warehouse, first.trace_id).rstrip(b"\n") == answer.content
            for event in events[:50]:  # every answer is the warehouse's own bytes
                if event is not first:
                    got = await client.get(f"/api/traces/{event.trace_id}")
                    assert got.content == by_id(warehouse, event.trace_id).rstrip(b"\n")
            missing = await client.get("/api/traces/no-such-trace")
            assert missing.status_code == 404
            assert "no-such-trace" in missing.json()["error"]["message"]


async def test_the_index_catches_up_and_follows_a_recreated_table(settings: Settings):
    events = list(generate_events(200, seed=43, broken_share=0.0))
    await publish(settings, events)
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))
    warehouse = Warehouse.connect(settings)
    assert warehouse.trace_index is not None and len(warehouse.trace_index) == len(events)

    # A new index beside rows written before it existed copies them on first use.
    fresh = Warehouse(warehouse.client, warehouse.database, embedded=True,
                      trace_index=TraceIndex(settings.home / "other-index.sqlite3"))
    fresh.ensure_tables()
    assert fresh.index_traces(settings.topics.valid, {}) == len(events)
    assert fresh.trace_index.get(events[3].trace_id) == by_id(warehouse, events[3].trace_id).rstrip(b"\n")

    # The table is a view of the log; so is the index: a recreated table empties it.
    drop_and_recreate_tables(warehouse)
    assert len(warehouse.trace_index) == 0
    assert warehouse.trace_index.get(events[3].trace_id) is None
