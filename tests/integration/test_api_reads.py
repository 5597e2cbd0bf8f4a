"""The read API over HTTP (a real uvicorn socket) after a real ingest: broker, processors, chDB.

The processors run in this test process, which owns the session's chDB
folder; the API shares that warehouse, as in `tracestream serve`.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from api.app import create_app
from api.server import serving
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.base import GeneratedEvent
from devtools.generator import generate_events
from streams.catchup import wait_until_caught_up
from tests.conftest import free_port
from tests.integration.support import (
    api_after_ingest,
    expected_outcome,
    kafka_of,
    publish,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]


async def all_pages(client: httpx.AsyncClient, limit: int, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        response = await client.get("/api/traces", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def valid_records(events: list[GeneratedEvent]) -> list[dict]:
    return [e.record for e in events if e.expected_reason is None]


async def test_pages_visit_every_trace_once_while_new_traces_arrive(settings: Settings):
    first = list(generate_events(400, seed=21, broken_share=0.0))
    later = list(generate_events(400, seed=22, broken_share=0.0))
    async with api_after_ingest(settings, first) as (_, processors, client):
        async def keep_publishing() -> None:
            for start in range(0, len(later), 40):
                await publish(settings, later[start:start + 40])
                await asyncio.sleep(0.05)

        publisher = asyncio.create_task(keep_publishing())
        pages = []
        cursor = None
        while True:  # page slowly, so the writes land between pages
            response = await client.get("/api/traces", params={"limit": 23, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            await asyncio.sleep(0.01)
        await publisher
        materialized_while_paging = processors.writer.rows_written

        seen = [(item["partition"], item["offset"]) for page in pages for item in page]
        assert len(seen) == len(set(seen)), "a trace was served twice"
        for partition in {p for p, _ in seen}:
            offsets = [o for p, o in seen if p == partition]
            assert offsets == sorted(offsets), "a partition was not walked in offset order"
        ids = Counter(item["trace_id"] for page in pages for item in page)
        assert set(ids) >= {r["trace_id"] for r in valid_records(first)}, "a trace present before paging began was skipped"
        assert all(len(page) <= 23 for page in pages)
        assert all("prompt" not in item and isinstance(item["steps"], int) for page in pages for item in page)
        assert materialized_while_paging > len(first)  # traces really arrived during the walk

        await wait_until_caught_up(settings, kafka_of(settings))
        final = [item for page in await all_pages(client, 500) for item in page]
        assert sorted(item["trace_id"] for item in final) == sorted(r["trace_id"] for r in valid_records(first + later))
        # The unfiltered pages come from api.fastlane; a filter that keeps everything goes through the route.
        routed = [item for page in await all_pages(client, 500, created_from="1970-01-01T00:00:00Z") for item in page]
        assert routed == final


async def test_filters_match_a_reference_computed_from_the_published_records(settings: Settings):
    events = list(generate_events(300, seed=31, broken_share=0.0))
    records = valid_records(events)
    created = sorted(r["created_at"] for r in records)
    window = (created[50], created[200])
    async with api_after_ingest(settings, events) as (_, _, client):
        async def ids(**params) -> set[str]:
            return {item["trace_id"] for page in await all_pages(client, 41, **params) for item in page}

        cases = [
            ({"source": ["tutor-bot", "agent-v2"]}, lambda r: r["source"] in ("tutor-bot", "agent-v2")),
            ({"meta": ["difficulty=hard"]}, lambda r: r["meta"].get("difficulty") == "hard"),
            ({"meta": ["lang=en", "tools=calculator"]},
             lambda r: r["meta"].get("lang") == "en" and r["meta"].get("tools") == "calculator"),
            ({"trace_version": [records[0]["trace_version"]]}, lambda r: r["trace_version"] == records[0]["trace_version"]),
            ({"created_from": window[0].isoformat(), "created_until": window[1].isoformat()},
             lambda r: window[0] <= r["created_at"] < window[1]),
            ({"source": ["gsm-synth"], "meta": ["difficulty=easy"]},
             lambda r: r["source"] == "gsm-synth" and r["meta"].get("difficulty") == "easy"),
        ]
        for params, keep in cases:
            expected = {r["trace_id"] for r in records if keep(r)}
            assert expected, f"the reference for {params} is empty; the case checks nothing"
            assert await ids(**params) == expected, params
        assert await ids(source=["no-such-source"]) == set()


async def test_one_trace_whole_with_its_coordinates_and_two_side_by_side(settings: Settings):
    events = list(generate_events(40, seed=41, broken_share=0.0))
    records = valid_records(events)
    async with api_after_ingest(settings, events) as (_, processors, client):
        a, b = records[3], records[4]
        response = await client.get(f"/api/traces/{a['trace_id']}")
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        trace = response.json()
        compared_a = (await client.get("/api/traces/compare", params={"a": a["trace_id"], "b": a["trace_id"]})).json()
        assert compared_a["a"] == trace and compared_a["differing_fields"] == []
        assert trace["prompt"] == a["prompt"] and trace["final_answer"] == a["final_answer"]
        assert [(s["i"], s["type"], s["content"]) for s in trace["steps"]] == \
            [(s["i"], s["type"], s["content"]) for s in sorted(a["steps"], key=lambda s: s["i"])]
        assert trace["topic"] == settings.topics.valid
        (row,) = await processors.writer.run(lambda w: w.query(
            f"SELECT partition, offset FROM `{w.database}`.traces FINAL WHERE trace_id = {{id:String}}",
            {"id": a["trace_id"]}))
        assert (trace["partition"], trace["offset"]) == row

        compared = (await client.get("/api/traces/compare", params={"a": a["trace_id"], "b": b["trace_id"]})).json()
        assert compared["a"]["trace_id"] == a["trace_id"] and compared["b"]["trace_id"] == b["trace_id"]
        assert "prompt" in compared["differing_fields"]
        assert [p["i"] for p in compared["steps"]] == sorted({s["i"] for s in a["steps"]} | {s["i"] for s in b["steps"]})

        missing = await client.get("/api/traces/not-a-trace")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "not_found" and "not-a-trace" in error["message"]
        assert error["details"] == [{"field": "path.trace_id", "message": "unknown trace_id"}]
        half_missing = await client.get("/api/traces/compare", params={"a": a["trace_id"], "b": "nope"})
        assert half_missing.status_code == 404 and half_missing.json()["error"]["details"][0]["field"] == "query.b"


async def test_bad_requests_get_422_naming_the_field(settings: Settings):
    async with api_after_ingest(settings, list(generate_events(5, seed=51, broken_share=0.0))) as (_, _, client):
        too_many = await client.get("/api/traces", params={"limit": 501})
        assert too_many.status_code == 422
        assert too_many.json()["error"]["details"][0]["field"] == "query.limit"
        assert "500" in too_many.json()["error"]["message"]
        bad_cursor = await client.get("/api/traces", params={"cursor": "bm90LWEtY3Vyc29y"})
        assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["details"][0]["field"] == "query.cursor"
        bad_meta = await client.get("/api/traces", params={"meta": "difficulty"})
        assert bad_meta.status_code == 422 and "key=value" in bad_meta.json()["error"]["message"]
        bad_time = await client.get("/api/traces", params={"created_from": "yesterday"})
        assert bad_time.status_code == 422 and bad_time.json()["error"]["details"][0]["field"] == "query.created_from"
        for name, instant in (("created_from", "9999-12-31T23:59:59Z"), ("created_until", "1899-12-31T09:59:59-14:00")):
            far = await client.get("/api/traces", params={name: instant})
            assert far.status_code == 422, (name, far.text)
            assert far.json()["error"]["details"][0]["field"] == f"query.{name}"
        edge = await client.get("/api/traces", params={"created_until": "2299-12-31T23:59:59Z"})
        assert edge.status_code == 200 and len(edge.json()["items"]) == 5
        nowhere = await client.get("/api/nothing-here")
        assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"


async def test_dead_letters_by_reason_match_what_was_broken(settings: Settings):
    events = list(generate_events(300, seed=61, broken_share=0.3))
    _, reasons = expected_outcome(events)
    async with api_after_ingest(settings, events) as (_, _, client):
        body = (await client.get("/api/dlq", params={"limit": 500})).json()
        assert Counter({c["reason"]: c["count"] for c in body["counts"]}) == reasons
        assert Counter(item["reason"] for item in body["items"]) == reasons
        reason = next(iter(reasons))
        only = (await client.get("/api/dlq", params={"reason": reason, "limit": 7})).json()
        assert {item["reason"] for item in only["items"]} == {reason}
        assert len(only["items"]) == min(7, reasons[reason])
        walks = {}
        for order in ("asc", "desc"):
            walked, cursor = [], None
            while True:
                params = {"limit": 9, "order": order, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/api/dlq", params=params)).json()
                walked += [(item["ingested_at"], item["partition"], item["offset"]) for item in page["items"]]
                if not (cursor := page["next_cursor"]):
                    break
            walks[order] = walked
        assert walks["asc"] == sorted(set(walks["asc"])) and len(walks["asc"]) == sum(reasons.values())
        assert walks["desc"] == walks["asc"][::-1]
        desc_cursor = (await client.get("/api/dlq", params={"limit": 2, "order": "desc"})).json()["next_cursor"]
        other_order = await client.get("/api/dlq", params={"limit": 2, "cursor": desc_cursor})
        assert other_order.status_code == 422 and other_order.json()["error"]["details"][0]["field"] == "query.cursor"


async def test_stats_health_readiness_and_metrics(settings: Settings):
    events = list(generate_events(120, seed=71, broken_share=0.1))
    valid, reasons = expected_outcome(events)
    async with api_after_ingest(settings, events) as (_, _, client):
        stats = (await client.get("/api/stats")).json()
        assert stats["ingest"]["traces"]["total"] == valid
        assert stats["ingest"]["traces"]["windows"][0]["rows"] == valid  # all written within the last minute
        assert stats["dead_letters"] == sum(reasons.values())
        lag = {(row["group"], row["topic"], row["partition"]): row["lag"] for row in stats["lag"]}
        assert lag and set(lag.values()) == {0}
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"kafka": "ok", "warehouse": "ok"}
        exposition = (await client.get("/metrics")).text
        assert 'tracestream_api_requests_total{method="GET",route="/api/stats",status="200"} 1.0' in exposition


async def test_readyz_is_503_naming_kafka_when_the_broker_is_unreachable(settings: Settings):
    dead = f"127.0.0.1:{free_port()}"
    settings = settings.model_copy(update={"api_port": free_port()})
    app = create_app(settings, kafka=KafkaClients(dead), ingest=False)
    async with serving(app, settings.api_host, settings.api_port) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready" and "kafka" in error["message"]
    assert [d["component"] for d in error["details"]] == ["kafka"]
    assert dead in error["details"][0]["message"]


async def test_reads_can_be_put_behind_the_token(settings: Settings):
    settings = settings.model_copy(update={"api_token": "s3cret", "api_protect_reads": True})
    async with api_after_ingest(settings, list(generate_events(5, seed=81, broken_share=0.0))) as (_, _, client):
        refused = await client.get("/api/traces")
        assert refused.status_code == 401
        assert "bearer token" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/api/traces", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
        ok = await client.get("/api/traces", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 5
        assert (await client.get("/healthz")).status_code == 200
