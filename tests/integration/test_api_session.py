"""The dashboard's session cookie: how it is issued, what it opens (reads, the event stream), what it never opens.

The first tests need no infrastructure (every answer they check comes before
the warehouse); the last one reads real data through a real broker and chDB.
"""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie

import httpx
import pytest

from api.app import create_app
from api.deps import SESSION_COOKIE, SESSION_MAX_AGE_S, issue_session, read_session
from api.server import serving
from deploy.settings import Settings
from devtools.generator import generate_events
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics
from tests.conftest import free_port
from tests.integration.support import kafka_of, publish, running_processors
from tests.integration.test_api_datasets_runs import metrics, run_event, send
from tests.integration.test_api_ingest import as_json

pytestmark = [pytest.mark.asyncio]

TOKEN = "s3cret-read-and-ingest"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _no_warehouse():
    raise AssertionError("this request should not reach the warehouse")


def protected(token: str | None = TOKEN, protect_reads: bool = True) -> Settings:
    return Settings(api_token=token, api_protect_reads=protect_reads, kafka_bootstrap=None)


def client_of(settings: Settings, base_url: str = "http://api") -> httpx.AsyncClient:
    app = create_app(settings, warehouse_factory=_no_warehouse, ingest=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def set_cookie(response: httpx.Response) -> dict[str, str]:
    """The Set-Cookie header's attributes, lower-cased names; the value under ``value``."""
    (header,) = response.headers.get_list("set-cookie")
    morsel = SimpleCookie(header)[SESSION_COOKIE]
    return {"value": morsel.value, **{k: str(v) for k, v in morsel.items() if v}}


def refused_for_sign_in(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and error["details"] == []
    return error["message"]


@pytest.mark.unit
@pytest.mark.timeout(30)
async def test_sign_in_sets_an_httponly_samesite_strict_cookie_that_is_not_the_token():
    async with client_of(protected()) as client:
        assert (await client.get("/api/session")).json() == {"required": True, "signed_in": False, "expires_at": None}

        wrong = await client.post("/api/session", json={"token": "guess"})
        assert "wrong" in refused_for_sign_in(wrong) and "TRACESTREAM_API_TOKEN" in wrong.json()["error"]["message"]
        assert "set-cookie" not in wrong.headers
        for bad in ({"content": b"{", "headers": {"Content-Type": "application/json"}}, {"json": {}},
                    {"json": ["t"]}, {"json": {"token": 7}}, {"content": b"t", "headers": {"Content-Type": "text/plain"}},
                    {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}},
                    {"content": b"\xff", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}):
            refused = await client.post("/api/session", **bad)
            assert refused.status_code == 422 and "token" in refused.json()["error"]["message"], bad
        lone_surrogate = await client.post("/api/session", content=b'{"token": "\\ud800"}',
                                           headers={"Content-Type": "application/json"})
        assert lone_surrogate.status_code == 401

        before = int(time.time())
        signed_in = await client.post("/api/session", json={"token": TOKEN})
        assert signed_in.status_code == 200 and signed_in.headers["cache-control"] == "no-store"
        body = signed_in.json()
        assert body["required"] is True and body["signed_in"] is True
        cookie = set_cookie(signed_in)
        assert cookie["httponly"] == "True" and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
        assert cookie["max-age"] == str(SESSION_MAX_AGE_S) and "secure" not in cookie  # plain http here
        assert TOKEN not in cookie["value"]
        session = read_session(TOKEN, cookie["value"], time.time())
        assert session is not None and before <= session.issued_at_s <= int(time.time())
        assert (await client.get("/api/session")).json()["signed_in"] is True

        form = await client.post("/api/session", data={"token": TOKEN})  # a plain HTML form works too
        assert form.status_code == 200 and set_cookie(form)["httponly"] == "True"

        signed_out = await client.delete("/api/session")
        assert signed_out.json()["signed_in"] is False
        cleared = set_cookie(signed_out)
        assert cleared["value"] == "" and cleared["max-age"] == "0" and cleared["path"] == "/"
        assert (await client.get("/api/session")).json()["signed_in"] is False

    async with client_of(protected(), base_url="https://api") as client:  # over https the cookie is Secure
        assert set_cookie(await client.post("/api/session", json={"token": TOKEN}))["secure"] == "True"


@pytest.mark.unit
@pytest.mark.timeout(30)
async def test_a_tampered_expired_or_old_token_cookie_counts_as_no_sign_in():
    value, _ = issue_session(TOKEN, time.time())
    scope, issued, expires, signature = value.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    expired, _ = issue_session(TOKEN, time.time() - SESSION_MAX_AGE_S - 1)
    future, _ = issue_session(TOKEN, time.time() + 3600)
    longer = f"{scope}.{issued}.{int(expires) + 86400}.{signature}"
    for bad in (f"{scope}.{issued}.{expires}.{flipped}", longer, expired, future, "read.1.2", TOKEN, "",
                f"write.{issued}.{expires}.{signature}", f"{scope}.{issued}.{expires}.{signature}x", "x" * 200):
        assert read_session(TOKEN, bad, time.time()) is None, bad
        async with client_of(protected()) as client:
            client.cookies.set(SESSION_COOKIE, bad)
            assert (await client.get("/api/session")).json()["signed_in"] is False
            assert "sign in" in refused_for_sign_in(await client.get("/api/traces"))
    assert read_session(TOKEN, value, time.time()) is not None

    # Changing the token signs every browser out: the cookie was signed with a key derived from the old one.
    async with client_of(protected("rotated-token")) as client:
        client.cookies.set(SESSION_COOKIE, value)
        assert (await client.get("/api/session")).json()["signed_in"] is False
        message = refused_for_sign_in(await client.get("/api/runs"))
        assert "sign in again at /dashboard" in message and "token" in message
        assert (await client.post("/api/session", json={"token": TOKEN})).status_code == 401
        fresh = await client.post("/api/session", json={"token": "rotated-token"})
        assert fresh.status_code == 200 and read_session(TOKEN, set_cookie(fresh)["value"], time.time()) is None


@pytest.mark.unit
@pytest.mark.timeout(30)
async def test_the_cookie_never_publishes_and_without_protected_reads_there_is_nothing_to_sign_in_to():
    async with client_of(protected()) as client:
        assert (await client.post("/api/session", json={"token": TOKEN})).status_code == 200
        assert client.cookies.get(SESSION_COOKIE)
        for path in ("/api/traces", "/api/traces/batch"):
            refused = await client.post(path, json={"prompt": "p", "steps": [], "final_answer": "a"})
            assert "publishing needs a bearer token" in refused_for_sign_in(refused), path
        # Without a cookie or a bearer header a read says how to get either.
        client.cookies.clear()
        message = refused_for_sign_in(await client.get("/api/stats"))
        assert "bearer token" in message and "sign in at /dashboard" in message

    async with client_of(protected(token=None)) as client:
        assert (await client.get("/api/session")).json() == {"required": False, "signed_in": False, "expires_at": None}
        nothing = await client.post("/api/session", json={"token": "anything"})
        assert nothing.status_code == 409 and "nothing to sign in to" in nothing.json()["error"]["message"]
    async with client_of(protected(protect_reads=False)) as client:  # a token for ingest only: reads are open
        assert (await client.get("/api/session")).json()["required"] is False


@pytest.mark.integration
@pytest.mark.timeout(240)
async def test_a_session_cookie_reads_every_protected_route_and_the_run_event_stream(settings: Settings):
    settings = settings.model_copy(update={"api_port": free_port(), "api_token": TOKEN, "api_protect_reads": True})
    events = list(generate_events(30, seed=91, broken_share=0.2))
    await publish(settings, events)
    await ensure_pipeline_topics(settings, kafka_of(settings))
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await send(producer, settings, run_event("done", "queued", 0), run_event("done", "started", 1),
                   metrics("done", 1, 2.0), metrics("done", 2, 1.5),
                   run_event("done", "evaluated", 5, scorecard='{"exact_match":0.25,"loss":1.5}'),
                   run_event("done", "completed", 6))
    finally:
        await producer.stop()
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))
        app = create_app(settings)
        async with serving(app, settings.api_host, settings.api_port) as base_url, \
                httpx.AsyncClient(base_url=base_url, timeout=30) as client, \
                httpx.AsyncClient(base_url=base_url, timeout=30, headers=BEARER) as with_bearer:
            trace_id = next(e.trace_id for e in events if e.expected_reason is None)
            reads = ["/api/traces", "/api/traces?limit=5", f"/api/traces/{trace_id}", "/api/dlq", "/api/stats",
                     "/api/datasets", "/api/runs", "/api/runs/done", "/api/runs/done/metrics",
                     "/api/evaluations?dataset=arith"]
            for path in reads:
                assert "sign in at /dashboard" in refused_for_sign_in(await client.get(path)), path
            assert (await client.get("/api/runs/done/events")).status_code == 401

            assert (await client.post("/api/session", json={"token": TOKEN})).status_code == 200
            for path in reads:
                answer = await client.get(path)
                assert answer.status_code == 200, (path, answer.text)
                if path != "/api/stats":  # its rates move with the clock
                    assert answer.json() == (await with_bearer.get(path)).json(), path
            assert (await client.get(f"/api/traces/{trace_id}")).json()["trace_id"] == trace_id

            received = []  # the event stream, as the dashboard's EventSource reads it: with the cookie only
            async with client.stream("GET", "/api/runs/done/events") as stream:
                assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        received.append(json.loads(line.removeprefix("data: "))["event_type"])
            assert received == ["queued", "started", "metrics", "metrics", "evaluated", "completed"]

            # The cookie is for reads: the ingest door still wants the bearer header.
            fresh = as_json(next(e.record for e in events if e.expected_reason is None))
            del fresh["trace_id"]  # the door gives it a new one
            assert client.cookies.get(SESSION_COOKIE)
            refused = await client.post("/api/traces", json=fresh)
            assert "publishing needs a bearer token" in refused_for_sign_in(refused)
            accepted = await client.post("/api/traces", json=fresh, headers=BEARER)
            assert accepted.status_code == 202, accepted.text

            await client.delete("/api/session")
            assert not client.cookies.get(SESSION_COOKIE)
            assert (await client.get("/api/traces")).status_code == 401
