"""Datasets, runs and the leaderboard over HTTP; export bytes equal the CLI's; run events live over SSE."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_app
from api.server import serving
from dataset.filter import parse_filter
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics
from tests.conftest import free_port
from tests.integration.support import cli, kafka_of, publish, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

CODEC = AvroCodec(default_registry())
T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_dataset_export_over_http_is_byte_identical_to_the_cli(settings: Settings):
    settings = settings.model_copy(update={"api_port": free_port()})
    await publish(settings, generate_events(250, seed=101, broken_share=0.1))
    async with running_processors(settings):
        await wait_until_caught_up(settings, kafka_of(settings))  # snapshot what was ingested, not an empty log
        request = DatasetRequest(name="gsm", filter=parse_filter(["source=gsm-synth,tutor-bot"]), split=Split(0.2))
        manifest = await create_dataset(settings, kafka_of(settings), request, CODEC)
        await create_dataset(settings, kafka_of(settings), DatasetRequest(name="gsm", since=manifest.ref), CODEC)
        await wait_until_caught_up(settings, kafka_of(settings))
        app = create_app(settings)
        async with serving(app, settings.api_host, settings.api_port) as base_url, \
                httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            listed = (await client.get("/api/datasets")).json()
            assert [(d["name"], d["version"], d["status"]) for d in listed] == [("gsm", 1, "ready"), ("gsm", 2, "ready")]
            assert listed[0]["record_count"] == manifest.record_count > 0
            detail = (await client.get("/api/datasets/gsm")).json()
            assert [entry["since"] for entry in detail["lineage"]] == [None, {"name": "gsm", "version": 1}]
            assert detail["versions"][0]["manifest"]["content_sha256"] == manifest.content_sha256

            for fmt, split, source in (("trace", "all", "kafka"), ("tunix_sft", "train", "kafka"),
                                       ("training_example", "eval", "warehouse")):
                async with client.stream("GET", "/api/datasets/gsm/export",
                                         params={"format": fmt, "split": split, "version": 1, "source": source}) as r:
                    assert r.status_code == 200
                    over_http = b"".join([chunk async for chunk in r.aiter_bytes()])
                done = await asyncio.to_thread(cli, settings, "dataset", "export", "gsm@1", "--format", fmt, "--split", split)
                assert done.returncode == 0, done.stderr
                assert over_http == done.stdout.encode() and over_http, (fmt, split, source)

            async with client.stream("GET", "/api/datasets/gsm/export",
                                     params={"format": "parquet", "version": 1, "source": "warehouse"}) as r:
                assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
                parquet_over_http = b"".join([chunk async for chunk in r.aiter_bytes()])
            out = settings.home / f"gsm-{settings.app_id}.parquet"
            done = await asyncio.to_thread(cli, settings, "dataset", "export", "gsm@1", "--format", "parquet",
                                           "--out", str(out), "--workers", "2")  # replayed, decoded in 2 processes
            assert done.returncode == 0, done.stderr
            assert parquet_over_http == out.read_bytes() and parquet_over_http[:4] == b"PAR1"
            refused = await asyncio.to_thread(cli, settings, "dataset", "export", "gsm@1", "--source", "warehouse",
                                              "--workers", "2")
            assert refused.returncode == 2 and "--workers is for --source kafka" in refused.stderr

            unknown = await client.get("/api/datasets/nope/export")
            assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
            bad_format = await client.get("/api/datasets/gsm/export", params={"format": "csv"})
            assert bad_format.status_code == 422 and "tunix_sft" in bad_format.json()["error"]["message"]
            assert (await client.get("/api/datasets/nope")).status_code == 404


def run_event(run_id: str, event_type: str, i: int, **fields) -> dict:
    return {"run_id": run_id, "event_type": event_type, "at": T0 + timedelta(seconds=i), "dataset_name": "arith",
            "dataset_version": 1, "dataset_sha256": "ab" * 32, "config": "{}", "seed": 1, "workers": 1, **fields}


def metrics(run_id: str, step: int, loss: float) -> dict:
    return run_event(run_id, "metrics", 10 + step, metrics={"step": step, "loss": loss, "learning_rate": 1e-3,
                                                            "grad_norm": 0.5, "tokens_per_s": 900.0})


async def send(producer: AIOKafkaProducer, settings: Settings, *events: dict) -> None:
    for event in events:
        await producer.send_and_wait(settings.topics.runs, CODEC.encode(event, "RunEvent"), key=event["run_id"].encode())


async def test_runs_metrics_leaderboard_and_live_events_over_sse(settings: Settings):
    settings = settings.model_copy(update={"api_port": free_port()})
    await ensure_pipeline_topics(settings, kafka_of(settings))
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await send(producer, settings,
                   run_event("done-a", "queued", 0), run_event("done-a", "started", 1), metrics("done-a", 1, 2.0),
                   run_event("done-a", "evaluated", 5, scorecard='{"exact_match":0.25,"loss":1.5}'),
                   run_event("done-a", "completed", 6),
                   run_event("done-b", "started", 1), run_event("done-b", "evaluated", 5,
                                                                scorecard='{"exact_match":0.5,"loss":1.9}'),
                   run_event("done-b", "completed", 6),
                   run_event("live", "queued", 0), run_event("live", "started", 1))
        async with running_processors(settings):
            await wait_until_caught_up(settings, kafka_of(settings))
            app = create_app(settings)
            async with serving(app, settings.api_host, settings.api_port) as base_url, \
                    httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                runs = {r["run_id"]: r for r in (await client.get("/api/runs")).json()}
                assert {k: r["status"] for k, r in runs.items()} == {"done-a": "completed", "done-b": "completed",
                                                                     "live": "running"}
                running = (await client.get("/api/runs", params={"status": "running"})).json()
                assert [r["run_id"] for r in running] == ["live"]
                assert (await client.get("/api/runs", params={"dataset": "other"})).json() == []
                board = (await client.get("/api/evaluations", params={"dataset": "arith"})).json()
                assert [(e["rank"], e["run_id"], e["score"]) for e in board["entries"]] == [(1, "done-b", 0.5),
                                                                                          (2, "done-a", 0.25)]
                assert (await client.get("/api/runs/nope/events")).status_code == 404

                received: list[tuple[str, dict]] = []

                async def listen() -> None:
                    async with client.stream("GET", "/api/runs/live/events") as stream:
                        assert stream.status_code == 200
                        assert stream.headers["content-type"].startswith("text/event-stream")
                        event_type = None
                        async for line in stream.aiter_lines():
                            if line.startswith("event: "):
                                event_type = line.removeprefix("event: ")
                            elif line.startswith("data: "):
                                received.append((event_type, json.loads(line.removeprefix("data: "))))

                listener = asyncio.create_task(listen())
                losses = [2.4, 2.1, 1.9, 1.6, 1.2]
                for step, loss in enumerate(losses, start=1):  # the run progresses while the client listens
                    await send(producer, settings, metrics("live", step, loss))
                    await asyncio.sleep(0.3)
                await send(producer, settings, run_event("live", "cancel_requested", 30),
                           run_event("live", "completed", 31))
                await asyncio.wait_for(listener, 30)  # the stream ends by itself after the terminal event

                assert [t for t, _ in received] == ["queued", "started", *["metrics"] * 5, "cancel_requested", "completed"]
                assert [e["metrics"]["loss"] for t, e in received if t == "metrics"] == losses
                assert [e["metrics"]["step"] for t, e in received if t == "metrics"] == [1, 2, 3, 4, 5]
                curve = (await client.get("/api/runs/live/metrics")).json()["points"]
                assert [p["loss"] for p in curve] == losses
                detail = (await client.get("/api/runs/live")).json()
                assert detail["run"]["status"] == "completed" and detail["run"]["steps"] == 5
                assert [e["event_type"] for e in detail["events"]] == ["queued", "started", "cancel_requested", "completed"]
    finally:
        await producer.stop()
