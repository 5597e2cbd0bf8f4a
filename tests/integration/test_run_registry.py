"""runs.events is materialized into `runs` (every event) and `run_metrics` (the loss curve)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics
from tests.integration.support import kafka_of, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(120)]

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def run_event(event_type: str, i: int, **fields) -> dict:
    return {"run_id": "run-1", "event_type": event_type, "at": T0 + timedelta(seconds=i), "dataset_name": "arith",
            "dataset_version": 2, "dataset_sha256": "ab" * 32, "config": '{"preset":"tiny"}', "seed": 7,
            "workers": 2, **fields}


async def test_run_events_become_runs_and_metrics_rows_once(settings: Settings):
    codec = AvroCodec(default_registry())
    losses = [2.5, 2.1, 1.7]
    events = [run_event("queued", 0), run_event("started", 1)]
    events += [run_event("metrics", 2 + i, metrics={"step": i + 1, "loss": loss, "learning_rate": 1e-3,
                                                    "grad_norm": 0.5, "tokens_per_s": 1000.0})
               for i, loss in enumerate(losses)]
    events += [run_event("checkpoint", 5, checkpoint={"step": 3, "path": "/tmp/ckpt/3", "sha256": "cd" * 32}),
               run_event("evaluated", 6, scorecard='{"exact_match":0.25}'), run_event("completed", 7)]
    await ensure_pipeline_topics(settings, kafka_of(settings))
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(settings.topics.runs, codec.encode(event, "RunEvent"), key=b"run-1")
    finally:
        await producer.stop()

    async with running_processors(settings) as processors:
        await wait_until_caught_up(settings, kafka_of(settings))
        runs = await processors.writer.run(lambda w: w.query(
            f"SELECT event_type, workers, checkpoint_step, scorecard FROM `{w.database}`.runs FINAL ORDER BY at"))
        curve = await processors.writer.run(lambda w: w.query(
            f"SELECT step, loss FROM `{w.database}`.run_metrics FINAL WHERE run_id = {{run:String}} ORDER BY step",
            {"run": "run-1"}))
    assert [r[0] for r in runs] == [e["event_type"] for e in events]
    assert {r[1] for r in runs} == {2}
    assert [r[2] for r in runs if r[2] is not None] == [3]
    assert [r[3] for r in runs if r[3]] == ['{"exact_match":0.25}']
    assert curve == [(1, 2.5), (2, 2.1), (3, 1.7)]
