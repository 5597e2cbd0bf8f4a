"""The HTTP ingest door: batches reach traces.raw whole or not at all, and land in the warehouse once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError

from api.app import create_app
from api.server import serving
from deploy.kafka_broker import LocalKafkaBroker
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.lag import end_offsets
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics
from tests.conftest import free_port
from tests.integration.support import kafka_of, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]

TOKEN = "ingest-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def as_json(record: dict) -> dict:
    """A generated record as a producer would send it over HTTP."""
    out = {k: v for k, v in record.items() if v is not None}
    out["created_at"] = record["created_at"].isoformat()
    return out


def traces(n: int, seed: int) -> list[dict]:
    return [as_json(e.record) for e in generate_events(n, seed=seed, broken_share=0.0)]


async def raw_events(settings: Settings) -> int:
    return sum((await end_offsets(kafka_of(settings), [settings.topics.raw])).values())


@pytest.fixture
def door(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_port": free_port(), "api_token": TOKEN, "max_event_bytes": 64 * 1024,
                                       "api_max_body_bytes": 4 * 1024 * 1024})


async def test_a_batch_posted_over_http_is_materialized_exactly_once(door: Settings):
    await ensure_pipeline_topics(door, kafka_of(door))
    batch = traces(300, seed=91)
    app = create_app(door)
    async with serving(app, door.api_host, door.api_port) as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        response = await client.post("/api/traces/batch", json=batch, headers=AUTH)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["accepted"] == 300 and body["trace_ids"] == [t["trace_id"] for t in batch]
        single = {**traces(1, seed=92)[0]}
        del single["trace_id"]  # the door gives it one
        one = await client.post("/api/traces", json=single, headers=AUTH)
        assert one.status_code == 202, one.text
        (generated_id,) = one.json()["trace_ids"]
    assert await raw_events(door) == 301

    async with running_processors(door) as processors:
        await wait_until_caught_up(door, kafka_of(door))
        rows, distinct = (await processors.writer.run(lambda w: w.query(
            f"SELECT count(), uniqExact(trace_id) FROM `{w.database}`.traces FINAL "
            "WHERE trace_id IN {ids:Array(String)}", {"ids": body["trace_ids"] + [generated_id]})))[0]
    assert (rows, distinct) == (301, 301)


async def test_a_bad_batch_is_refused_whole_naming_the_bad_item(door: Settings):
    await ensure_pipeline_topics(door, kafka_of(door))
    app = create_app(door)
    async with serving(app, door.api_host, door.api_port) as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        shape = traces(20, seed=93)
        del shape[7]["steps"]
        response = await client.post("/api/traces/batch", json=shape, headers=AUTH)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["details"] == [{"field": "body.7.steps", "message": "Field required"}]
        assert "item 7" in error["message"]

        rule = traces(20, seed=94)
        rule[12]["steps"] = [{"i": 0, "type": "plan", "content": "a"}, {"i": 0, "type": "plan", "content": "b"}]
        response = await client.post("/api/traces/batch", json=rule, headers=AUTH)
        assert response.status_code == 422
        error = response.json()["error"]
        assert "item 12" in error["message"] and "duplicate_step_index" in error["message"]
        assert error["details"][0]["field"] == "body.12.steps.1.i"

        # What the warehouse cannot hold is refused at the door too, naming the field.
        for n, (name, value, reason) in enumerate([
            ("trace_version", 2**40, None),  # pydantic's own bound
            ("created_at", "1800-01-01T00:00:00Z", "created_at_out_of_range"),
            ("score", float("nan"), "score_not_finite"),
        ]):
            batch = traces(3, seed=98 + n)
            batch[1][name] = value
            response = await client.post("/api/traces/batch", content=json.dumps(batch),  # NaN as JSON5 does
                                         headers={**AUTH, "Content-Type": "application/json"})
            assert response.status_code == 422, (name, response.text)
            error = response.json()["error"]
            assert error["details"][0]["field"] == f"body.1.{name}", error
            assert reason is None or reason in error["message"]

        big = traces(5, seed=95)
        big[3]["steps"][0]["content"] = "x" * 19_000
        big[3]["steps"] += [{"i": 100 + k, "type": "pad", "content": "y" * 19_000} for k in range(4)]
        response = await client.post("/api/traces/batch", json=big, headers=AUTH)
        assert response.status_code == 413
        assert "item 3" in response.json()["error"]["message"] and "65,536" in response.json()["error"]["message"]

        over = traces(1, seed=96) * 1001
        response = await client.post("/api/traces/batch", json=over, headers=AUTH)
        assert response.status_code == 422 and "1000" in response.json()["error"]["message"]

        huge = b"[" + b",".join([json.dumps(t).encode() for t in traces(1, seed=97)] * 3000) + b"]"
        response = await client.post("/api/traces/batch", content=huge, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 413 and "4,194,304" in response.json()["error"]["message"]
    assert await raw_events(door) == 0, "a refused batch published something"


async def test_ingest_needs_the_token(door: Settings):
    await ensure_pipeline_topics(door, kafka_of(door))
    app = create_app(door)
    trace = traces(1, seed=98)[0]
    async with serving(app, door.api_host, door.api_port) as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        missing = await client.post("/api/traces", json=trace)
        assert missing.status_code == 401
        assert missing.json()["error"] == {
            "code": "unauthorized", "details": [],
            "message": "publishing needs a bearer token: send 'Authorization: Bearer <TRACESTREAM_API_TOKEN>'"}
        wrong = await client.post("/api/traces/batch", json=[trace], headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        assert (await client.get("/api/traces")).status_code == 200  # reads stay open
    assert await raw_events(door) == 0


async def test_a_single_post_gets_the_same_answer_with_or_without_a_content_length(door: Settings):
    """With a Content-Length the fast lane answers; a chunked body goes to the route: same status, same error."""
    await ensure_pipeline_topics(door, kafka_of(door))
    app = create_app(door)
    bad_shape = traces(1, seed=120)[0]
    del bad_shape["steps"]
    bad_rule = traces(1, seed=121)[0]
    bad_rule["steps"] = [{"i": 0, "type": "plan", "content": "a"}, {"i": 0, "type": "plan", "content": "b"}]
    too_big = traces(1, seed=122)[0]
    too_big["steps"] = [{"i": k, "type": "pad", "content": "y" * 19_000} for k in range(4)]
    cases = [
        (bad_shape, AUTH), (bad_rule, AUTH), (too_big, AUTH), (b"{not json", AUTH),
        (traces(1, seed=123)[0], {}), (traces(1, seed=124)[0], {"Authorization": "Bearer guess"}),
        (traces(1, seed=125)[0], {"Authorization": f"bearer  {TOKEN}"}),  # as FastAPI parses it: any case, stripped
    ]

    async def chunked(body: bytes):
        yield body[:10]
        yield body[10:]

    async with serving(app, door.api_host, door.api_port) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        published = 0
        for trace, headers in cases:
            body = trace if isinstance(trace, bytes) else json.dumps(trace).encode()
            headers = {**headers, "Content-Type": "application/json"}
            answers = []
            for content in (body, chunked(body)):
                response = await client.post("/api/traces", content=content, headers=headers)
                error = response.json().get("error") if response.status_code != 202 else None
                answers.append((response.status_code, error))
                published += response.status_code == 202
            assert answers[0] == answers[1], (trace if isinstance(trace, bytes) else headers, answers)
            assert answers[0][0] in (202, 401, 413, 422), answers
        assert [status for status, _ in answers] == [202, 202]
    assert published == 2 and await raw_events(door) == 2


async def _limit_topic(kafka: KafkaClients, topic: str, max_message_bytes: int) -> None:
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  {"max.message.bytes": str(max_message_bytes)})])
        async with asyncio.timeout(10):  # until the broker says so too: the producer reads it from there
            while True:
                [response] = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})])
                if [entry[1] for entry in response.resources[0][4]] == [str(max_message_bytes)]:
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _records_at(kafka: KafkaClients, topic: str, where: set[tuple[int, int]]) -> dict[tuple[int, int], object]:
    """The records of ``topic`` at these (partition, offset) places."""
    consumer = kafka.consumer(enable_auto_commit=False, auto_offset_reset="earliest",
                              max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = sorted({p for p, _ in where})
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        found = {}
        async with asyncio.timeout(30):
            while not where <= set(found):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.update({(r.partition, r.offset): r for r in records})
        return found
    finally:
        await consumer.stop()


async def test_concurrent_single_posts_are_each_answered_202_only_after_their_own_record_was_acknowledged(
    door: Settings,
):
    """50 requests at once share batches; the one trace the topic refuses fails only its own request."""
    door = door.model_copy(update={"max_event_bytes": 1024 * 1024})
    kafka = kafka_of(door)
    await ensure_pipeline_topics(door, kafka)
    await _limit_topic(kafka, door.topics.raw, 200_000)  # below the big trace, above the others
    batch = traces(50, seed=71)
    big = batch[17]
    big["steps"] = [{"i": k, "type": "pad", "content": "z" * 19_000} for k in range(15)]  # ~285 KB

    app = create_app(door)
    async with serving(app, door.api_host, door.api_port) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=64),
    ) as client:
        producer = app.state.api.publisher.producer
        deliveries: dict[str, tuple[asyncio.Future, bytes]] = {}  # what the producer reported, by trace id
        publish_bytes = producer.publish_bytes

        async def spy(payload: bytes, key: bytes, **kwargs) -> asyncio.Future:
            delivery = await publish_bytes(payload, key, **kwargs)
            deliveries[key.decode()] = (delivery, payload)
            return delivery

        producer.publish_bytes = spy

        async def post(trace: dict) -> tuple[int, dict, bool]:
            response = await client.post("/api/traces", json=trace, headers=AUTH)
            # The server runs in this event loop: had it answered before its delivery settled, this shows it.
            return response.status_code, response.json(), deliveries[trace["trace_id"]][0].done()

        answers = await asyncio.gather(*(post(t) for t in batch))

    assert [status for status, _, _ in answers] == [413 if t is big else 202 for t in batch], answers
    assert all(settled for _, _, settled in answers)
    error = answers[17][1]["error"]
    assert error["code"] == "payload_too_large" and "max.message.bytes" in error["message"]
    assert error["details"] == [{"trace_id": big["trace_id"], "message": error["details"][0]["message"]}]
    with pytest.raises(MessageSizeTooLargeError):
        deliveries[big["trace_id"]][0].result()

    accepted = {t["trace_id"]: deliveries[t["trace_id"]] for t in batch if t is not big}
    placed = {trace_id: delivery.result() for trace_id, (delivery, _) in accepted.items()}
    assert {m.topic for m in placed.values()} == {door.topics.raw}
    records = await _records_at(kafka, door.topics.raw, {(m.partition, m.offset) for m in placed.values()})
    for trace_id, m in placed.items():
        record = records[(m.partition, m.offset)]
        assert (record.key, record.value) == (trace_id.encode(), accepted[trace_id][1])
    assert await raw_events(door) == 49


@pytest.mark.timeout(150)
async def test_with_the_broker_gone_each_post_is_a_503_within_the_delivery_timeout_and_the_door_recovers(
    tmp_path: Path, session_home: Path,
):
    broker = LocalKafkaBroker(Settings(home=tmp_path, kafka_bootstrap=None, kafka_heap_mb=512),
                              data_dir=tmp_path / "kafka")
    bootstrap = broker.start()
    try:
        run = uuid.uuid4().hex[:10]
        door = Settings(home=session_home, kafka_bootstrap=bootstrap, topic_prefix=f"t{run}.", app_id=f"test-{run}",
                        clickhouse_database=f"test_{run}", partitions=3, api_port=free_port(), api_token=TOKEN,
                        kafka_delivery_timeout_s=5)
        await ensure_pipeline_topics(door, kafka_of(door))
        sent = traces(12, seed=72)
        app = create_app(door)
        async with serving(app, door.api_host, door.api_port) as base_url, httpx.AsyncClient(
            base_url=base_url, timeout=60) as client:
            assert (await client.post("/api/traces", json=sent[0], headers=AUTH)).status_code == 202
            os.killpg(broker.pid, signal.SIGKILL)
            async with asyncio.timeout(30):
                while broker.is_running():
                    await asyncio.sleep(0.1)

            started = time.monotonic()
            gone = await asyncio.gather(*(client.post("/api/traces", json=t, headers=AUTH) for t in sent[1:6]))
            assert time.monotonic() - started < 5 + 10
            assert [r.status_code for r in gone] == [503] * 5, [r.text for r in gone]
            assert all("publish those again" in r.json()["error"]["message"] for r in gone)
            # The same keep-alive client, once the broker is back: a fresh Kafka client takes the traces.
            assert broker.start() == bootstrap
            back = await asyncio.gather(*(client.post("/api/traces", json=t, headers=AUTH) for t in sent[6:]))
            assert [r.status_code for r in back] == [202] * 6, [r.text for r in back]
    finally:
        broker.stop()
