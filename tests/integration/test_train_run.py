"""A local training run on a real dataset: its events on runs.events, in order, naming the dataset.

The processors run in this test process; the dataset is created through the
same function `tracestream dataset create` calls, and the run through the
one `tracestream train` calls.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dataset.errors import UnknownDataset
from dataset.snapshot import DatasetRequest
from dataset.split import Split
from deploy.kafka_admin import ensure_topics_async
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.lag import end_offsets, topic_partitions
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from tests.integration.support import dataset_of, kafka_of, running_processors
from trainer.config import ConfigError
from trainer.run import run_training

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]

CODEC = AvroCodec(default_registry())
TINY_20 = {"preset": "tiny", "train": {"total_steps": 20, "checkpoint_every": 10}}


async def run_events(settings: Settings, run_id: str) -> list[dict]:
    """Every RunEvent of ``run_id`` on runs.events, from the beginning, in log order."""
    kafka = kafka_of(settings)
    partitions = await topic_partitions(kafka, [settings.topics.runs])
    ends = await end_offsets(kafka, [settings.topics.runs])
    consumer = kafka.consumer(enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    events = []
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])  # explicit: seek_to_beginning can lose a race with the fetcher's reset
            end = ends.get(tp, 0)
            while await consumer.position(tp) < end:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if record.offset < end and record.key == run_id.encode():
                        event, _ = CODEC.decode_latest(record.value, "RunEvent")
                        events.append(event)
    finally:
        await consumer.stop()
    return events


async def test_run_publishes_ordered_events_naming_its_dataset(settings: Settings, tmp_path: Path):
    async with running_processors(settings):
        manifest = await dataset_of(settings, generate_events(120, seed=41, broken_share=0.0),
                                    DatasetRequest("sft", split=Split(eval_share=0.2)))
    assert manifest.train_count > 0 and manifest.eval_count > 0

    started = time.monotonic()
    outcome = await run_training(settings, kafka_of(settings), "sft", None, TINY_20,
                                 run_id="run-ok", workdir=tmp_path / "run")
    print(f"run_training took {time.monotonic() - started:.1f}s")

    assert outcome.status == "completed" and outcome.steps == 20
    assert outcome.checkpoint is not None and outcome.checkpoint.exists()
    assert outcome.scorecard["items"] == manifest.eval_count

    events = await run_events(settings, "run-ok")
    types = [e["event_type"] for e in events]
    assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types
    middle = types[2:-2]
    assert set(middle) == {"metrics", "checkpoint"}, types
    assert "failed" not in types

    steps = [e["metrics"]["step"] for e in events if e["event_type"] == "metrics"]
    assert steps == list(range(1, 21))  # strictly increasing, no gaps, no repeats
    losses = [e["metrics"]["loss"] for e in events if e["event_type"] == "metrics"]
    assert losses[-1] < losses[0]
    assert outcome.final_loss == pytest.approx(losses[-1])
    for e in events:
        if e["event_type"] == "metrics":
            m = e["metrics"]
            assert m["learning_rate"] >= 0 and m["grad_norm"] > 0 and m["tokens_per_s"] > 0

    # A checkpoint event follows the metrics of the step it holds.
    checkpoints = [(i, e["checkpoint"]) for i, e in enumerate(events) if e["event_type"] == "checkpoint"]
    assert [c["step"] for _, c in checkpoints] == [10, 20]
    for i, c in checkpoints:
        before = [e["metrics"]["step"] for e in events[:i] if e["event_type"] == "metrics"]
        assert before[-1] == c["step"]
        assert Path(c["path"]).exists() and len(c["sha256"]) == 64
    assert checkpoints[-1][1]["path"] == str(outcome.checkpoint)

    # Every event names the exact dataset, config and seed; the scorecard is canonical JSON.
    config = json.loads(events[0]["config"])
    assert config["train"]["total_steps"] == 20 and config["model"]["d_model"] == 64
    for e in events:
        assert (e["run_id"], e["dataset_name"], e["dataset_version"], e["dataset_sha256"]) == (
            "run-ok", "sft", manifest.version, manifest.content_sha256)
        assert e["config"] == events[0]["config"] and e["seed"] == 0 and e["workers"] == 1
    card = json.loads(events[-2]["scorecard"])
    assert card == json.loads(json.dumps(outcome.scorecard))
    assert events[-2]["scorecard"] == json.dumps(card, sort_keys=True, separators=(",", ":"))
    assert {"items", "scored", "exact_match", "loss", "perplexity", "by_source"} <= set(card)

    # An invalid config fails before training, naming the field, with the dataset it was meant for.
    with pytest.raises(ConfigError, match="total_step"):
        await run_training(settings, kafka_of(settings), "sft", manifest.version,
                           {"train": {"total_step": 5}}, run_id="run-badcfg", workdir=tmp_path / "bad")
    (failed,) = await run_events(settings, "run-badcfg")
    assert failed["event_type"] == "failed" and "total_step" in failed["error"]
    assert failed["dataset_sha256"] == manifest.content_sha256


async def test_unknown_dataset_publishes_failed_and_raises(settings: Settings, tmp_path: Path):
    await ensure_topics_async(kafka_of(settings), {settings.topics.runs: 1, settings.topics.datasets: 1})
    with pytest.raises(UnknownDataset, match="nope"):
        await run_training(settings, kafka_of(settings), "nope", 3, None, run_id="run-bad",
                           workdir=tmp_path / "run")

    events = await run_events(settings, "run-bad")
    assert [e["event_type"] for e in events] == ["failed"]
    failed = events[0]
    assert "nope@3" in failed["error"] and "tracestream dataset create" in failed["error"]
    assert (failed["dataset_name"], failed["dataset_version"], failed["dataset_sha256"]) == ("nope", 3, "")
    assert not (tmp_path / "run").exists()
