"""List walks over HTTP, in both orders, while traces keep arriving in every partition (broker, processors, chDB).

The rule under test (README, "The read API"): a walk serves every trace present
when it began exactly once and never repeats one; a trace that arrives during
the walk is served exactly once by an ``asc`` walk that has not ended, and
never by a ``desc`` walk. A walk ends when ``next_cursor`` is null.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from deploy.settings import Settings
from devtools.base import GeneratedEvent
from devtools.generator import generate_events
from streams.catchup import wait_until_caught_up
from tests.integration.support import (
    api_after_ingest,
    kafka_of,
    publish,
    wait_for_async,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]


class Walk:
    """One client's walk: pages requested one at a time, following next_cursor."""

    def __init__(self, client: httpx.AsyncClient, order: str, limit: int, **params) -> None:
        self.client, self.order, self.limit, self.params = client, order, limit, params
        self.cursor: str | None = None
        self.items: list[dict] = []
        self.pages = 0
        self.ended = False

    async def step(self) -> None:
        params = {**self.params, "order": self.order, "limit": self.limit, **({"cursor": self.cursor} if self.cursor else {})}
        response = await self.client.get("/api/traces", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= self.limit
        self.items += body["items"]
        self.pages += 1
        self.cursor = body["next_cursor"]
        self.ended = self.cursor is None
        assert self.ended == (len(body["items"]) < self.limit), "next_cursor is null exactly when a page is not full"

    async def to_end(self) -> list[dict]:
        while not self.ended:
            await self.step()
        return self.items

    def ids(self) -> Counter:
        return Counter(item["trace_id"] for item in self.items)

    def in_order(self) -> bool:
        """By (ingested_at, partition, offset), newest first for desc."""
        keys = [(item["ingested_at"], item["partition"], item["offset"]) for item in self.items]
        return keys == sorted(keys, reverse=self.order == "desc")

    def partitions_in_offset_order(self) -> bool:
        by_partition: dict[int, list[int]] = {}
        for item in self.items:
            by_partition.setdefault(item["partition"], []).append(item["offset"])
        return all(offsets == sorted(offsets, reverse=self.order == "desc") for offsets in by_partition.values())


def ids_of(events: list[GeneratedEvent]) -> set[str]:
    return {e.record["trace_id"] for e in events if e.expected_reason is None}


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
async def test_walks_in_both_orders_while_traces_arrive_in_every_partition(settings: Settings, cache: bool):
    first = list(generate_events(240, seed=81, broken_share=0.0))
    later = list(generate_events(240, seed=82, broken_share=0.0))
    if not cache:  # every page a query, as with a ClickHouse server
        settings = settings.model_copy(update={"api_cache_entries": 0})
    async with api_after_ingest(settings, first) as (_, processors, client):
        walks = [Walk(client, "asc", 11), Walk(client, "desc", 11)]
        for walk in walks:
            await walk.step()  # both walks begin here, with exactly `first` in the warehouse

        async def keep_publishing() -> None:
            for start in range(0, len(later), 24):
                await publish(settings, later[start:start + 24])
                await asyncio.sleep(0.03)

        publisher = asyncio.create_task(keep_publishing())
        # Page while the materializer writes: each of these pages waits for rows written since the last one.
        for _ in range(8):
            written = processors.writer.rows_written
            await wait_for_async(lambda w=written: processors.writer.rows_written > w or publisher.done(),
                                 timeout_s=30, every_s=0.01, what="traces arriving between pages")
            for walk in walks:
                assert not walk.ended, "the walk ended before the arrivals it should see"
                await walk.step()
        assert processors.writer.rows_written > len(first), "no trace arrived while the walks were paging"
        await publisher
        await wait_until_caught_up(settings, kafka_of(settings))  # every later trace is in before the walks end
        asc, desc = walks
        await asc.to_end()
        await desc.to_end()

        present, arrived = ids_of(first), ids_of(later)
        assert processors.writer.rows_written >= len(first) + len(arrived)
        for walk in walks:
            assert max(walk.ids().values()) == 1, f"{walk.order}: a trace was served twice"
            assert walk.partitions_in_offset_order(), f"{walk.order}: a partition was not walked in offset order"
        # The merged order across partitions is exact for what was present; an arrival may have been stored
        # with a time earlier than a row already served (two batches inserted out of build order).
        assert desc.in_order()
        assert set(asc.ids()) == present | arrived, "asc: every trace present or arriving before the end, once"
        assert set(desc.ids()) == present, "desc: the traces present at its first page, and no later one"
        arrived_partitions = {item["partition"] for item in asc.items if item["trace_id"] in arrived}
        assert arrived_partitions == set(range(settings.partitions)), "traces arrived in every partition"

        # A new desc walk sees everything, newest first: the reverse of a new asc walk (nothing arrives now).
        new_asc, new_desc = Walk(client, "asc", 37), Walk(client, "desc", 37)
        assert await new_desc.to_end() == (await new_asc.to_end())[::-1] and new_asc.in_order()
        assert set(new_asc.ids()) == present | arrived


async def test_filters_apply_in_both_orders_and_cursors_are_checked(settings: Settings):
    events = list(generate_events(200, seed=83, broken_share=0.0))
    records = [e.record for e in events if e.expected_reason is None]
    async with api_after_ingest(settings, events) as (_, _, client):
        cases = [
            ({"source": ["tutor-bot", "agent-v2"]}, lambda r: r["source"] in ("tutor-bot", "agent-v2")),
            ({"meta": ["difficulty=hard"]}, lambda r: r["meta"].get("difficulty") == "hard"),
            ({"created_from": sorted(r["created_at"] for r in records)[60].isoformat()},
             lambda r: r["created_at"] >= sorted(x["created_at"] for x in records)[60]),
        ]
        for params, keep in cases:
            expected = {r["trace_id"] for r in records if keep(r)}
            assert expected, f"the reference for {params} is empty; the case checks nothing"
            asc = await Walk(client, "asc", 7, **params).to_end()
            desc = await Walk(client, "desc", 7, **params).to_end()
            assert [i["trace_id"] for i in asc] == [i["trace_id"] for i in desc][::-1]
            assert Counter(i["trace_id"] for i in asc) == Counter(expected), params

        # Unfiltered pages come from api.fastlane; a filter that keeps everything goes through the route.
        for order in ("asc", "desc"):
            fast = await client.get("/api/traces", params={"order": order, "limit": 29})
            routed = await client.get("/api/traces", params={"order": order, "limit": 29, "created_from": "1970-01-01"})
            assert fast.content == routed.content and fast.headers["content-type"] == routed.headers["content-type"]
            assert await Walk(client, order, 29).to_end() == \
                await Walk(client, order, 29, created_from="1970-01-01T00:00:00Z").to_end()

        async def error(params: dict) -> tuple[int, str, str]:
            response = await client.get("/api/traces", params=params)
            body = response.json()
            return response.status_code, body["error"]["details"][0]["field"], body["error"]["message"]

        first_desc = (await client.get("/api/traces", params={"order": "desc", "limit": 5})).json()
        first_asc = (await client.get("/api/traces", params={"limit": 5})).json()
        status, field, message = await error({"cursor": first_desc["next_cursor"]})  # the fast lane's path
        assert (status, field) == (422, "query.cursor") and "order=desc" in message
        status, field, _ = await error({"cursor": first_asc["next_cursor"], "order": "desc", "source": "tutor-bot"})
        assert (status, field) == (422, "query.cursor")  # the route's path (a filter)
        for bad in ("garbage", "azE6MDo1", first_asc["next_cursor"][:-3], "A" * 50_000):
            for extra in ({}, {"order": "desc"}, {"source": "tutor-bot"}):
                status, field, _ = await error({"cursor": bad, **extra})
                assert (status, field) == (422, "query.cursor"), (bad[:20], extra)
        for extra in ({}, {"source": "tutor-bot"}):
            status, field, _ = await error({"limit": "9" * 5000, **extra})
            assert (status, field) == (422, "query.limit")
        status, field, _ = await error({"order": "newest"})
        assert (status, field) == (422, "query.order")
