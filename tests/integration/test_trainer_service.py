"""The trainer service: ready datasets that match the policy start runs, once, and bad ones fail without stopping it.

Everything is real: the broker, the processors (in this process, owning the
session's chDB folder), datasets created the way `tracestream dataset create`
creates them, and the service consuming datasets.events in its own group.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.admin import RecordsToDelete
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from dataset.ranges import parse_offsets_json
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.lag import end_offsets
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.support import (
    REPO,
    kafka_of,
    publish,
    running_processors,
    wait_for_async,
)
from tests.integration.test_train_run import run_events
from trainer.policy import parse_policy
from trainer.service import TrainerService, run_id_for, trainer_group

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

CODEC = AvroCodec(default_registry())
POLICY = parse_policy({"rules": [
    {"dataset": "bad-*", "config": {"preset": "tiny", "train": {"total_stepz": 3}}},
    {"dataset": "sft-*", "config": {"preset": "tiny", "train": {"total_steps": 8, "checkpoint_every": 4}}},
    {"dataset": "gone-*"},
    {"dataset": "nobase-*", "config": {"base_model": {"path": "/nonexistent/qwen3-0.6b"}}},
]})


async def serve_until(service: TrainerService, decisions: int) -> None:
    """Run the service until it has decided ``decisions`` dataset events, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_for_async(lambda: len(service.decisions) >= decisions or task.done(), timeout_s=200,
                             every_s=0.2, what=f"{decisions} decisions, have {service.decisions}")
    finally:
        stop.set()
        await task  # re-raises whatever stopped the service early


async def rewind_group(settings: Settings) -> None:
    """As if the trainer had crashed before committing anything: its group starts over at offset 0."""
    consumer = kafka_of(settings).consumer(group_id=trainer_group(settings),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topics.datasets, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(0, "")})
    finally:
        await consumer.stop()


async def test_ready_datasets_start_one_run_each_and_bad_ones_fail(settings: Settings):
    kafka = kafka_of(settings)
    async with running_processors(settings):
        await publish(settings, generate_events(150, seed=7, broken_share=0.0))
        await wait_until_caught_up(settings, kafka)
        ends = await end_offsets(kafka, [settings.topics.valid])
        # "gone" covers the first two offsets of each partition, which are deleted below; "sft" the rest.
        head = {str(tp.partition): [0, 2] for tp in ends}
        rest = {str(tp.partition): [2, end] for tp, end in ends.items()}
        for name, ranges in (("sft-a", rest), ("other", rest), ("bad-cfg", rest), ("gone-a", head),
                             ("nobase-a", rest)):
            await create_dataset(settings, kafka, DatasetRequest(
                name, split=Split(eval_share=0.2),
                from_offsets=parse_offsets_json(json.dumps(ranges), settings.topics.valid)), CODEC)
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=2) for tp in ends})
    finally:
        await admin.close()

    # datasets.events holds created + ready for each of the five: ten events.
    service = TrainerService(settings, kafka, POLICY)
    await serve_until(service, 10)
    ready = {d.run_id: d for d in service.decisions if d.run_id}
    by_action = Counter((d.action, d.status) for d in service.decisions)
    assert by_action == {("skipped", None): 6, ("started", "completed"): 1, ("started", "failed"): 3}, service.decisions
    assert any("no policy rule matches dataset other" in d.reason for d in service.decisions)

    sft = next(d for d in ready.values() if d.status == "completed")
    assert sft.run_id == run_id_for("sft-a", 1, sft.partition, sft.offset)
    events = await run_events(settings, sft.run_id)
    types = [e["event_type"] for e in events]
    assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types
    assert [e["metrics"]["step"] for e in events if e["metrics"]] == list(range(1, 9))

    failures = {d.run_id.split("-v")[0]: (await run_events(settings, d.run_id))[-1] for d in ready.values()
                if d.status == "failed"}
    assert failures["bad-cfg"]["event_type"] == "failed" and "total_stepz" in failures["bad-cfg"]["error"]
    assert failures["gone-a"]["event_type"] == "failed" and "[0, 2)" in failures["gone-a"]["error"]
    assert "base model directory /nonexistent/qwen3-0.6b does not exist" in failures["nobase-a"]["error"]

    # A trainer that lost its commits sees every event again and starts nothing twice.
    await rewind_group(settings)
    again = TrainerService(settings, kafka, POLICY)
    await serve_until(again, 10)
    assert {d.action for d in again.decisions} == {"skipped"}
    assert sorted(d.status for d in again.decisions if d.run_id) == ["completed", "failed", "failed", "failed"]
    assert [e["event_type"] for e in await run_events(settings, sft.run_id)] == types

    # The runs are materialized like any run: in order, with a loss curve that goes down.
    async with running_processors(settings) as processors:
        await wait_until_caught_up(settings, kafka)
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT event_type FROM `{w.database}`.runs FINAL WHERE run_id = {{run:String}} ORDER BY at, offset",
            {"run": sft.run_id}))
        curve = await processors.writer.run(lambda w: w.query(
            f"SELECT step, loss FROM `{w.database}`.run_metrics FINAL WHERE run_id = {{run:String}} ORDER BY step",
            {"run": sft.run_id}))
    assert [r[0] for r in rows] == types
    assert [step for step, _ in curve] == list(range(1, 9))
    assert curve[-1][1] < curve[0][1]


async def test_a_trainer_killed_mid_run_resumes_that_run_after_restart(settings: Settings, tmp_path: Path):
    kafka = kafka_of(settings)
    async with running_processors(settings):
        await publish(settings, generate_events(120, seed=9, broken_share=0.0))
        await wait_until_caught_up(settings, kafka)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [{"dataset": "sft-*", "config": {
        "preset": "tiny", "train": {"total_steps": 300, "checkpoint_every": 10}}}]}), encoding="utf-8")
    # datasets.events is new: created is offset 0, ready offset 1.
    run_id = run_id_for("sft-r", 1, 0, 1)

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "trainer", "--policy", str(policy), "-v"],
                                env=settings.child_environment(), cwd=REPO,
                                stdout=(tmp_path / f"trainer-{n}.log").open("wb"), stderr=subprocess.STDOUT)

    first = start(1)
    second = None
    try:
        await create_dataset(settings, kafka, DatasetRequest("sft-r", split=Split(eval_share=0.1)), CODEC)
        async def checkpointed() -> bool:
            return any(e["event_type"] == "checkpoint" for e in await run_events(settings, run_id))
        while not await checkpointed():
            assert first.poll() is None, (tmp_path / "trainer-1.log").read_text()
            await asyncio.sleep(0.2)
        first.kill()  # the driver dies mid-run, its dataset event not committed
        first.wait()
        killed_at = [e["event_type"] for e in await run_events(settings, run_id)]
        assert "completed" not in killed_at, "the run finished before the kill; make it longer"

        second = start(2)
        for _ in range(600):
            if (await run_events(settings, run_id))[-1]["event_type"] in {"completed", "failed"}:
                break
            assert second.poll() is None, (tmp_path / "trainer-2.log").read_text()
            await asyncio.sleep(0.5)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)

    events = await run_events(settings, run_id)
    types = [e["event_type"] for e in events]
    assert types[-1] == "completed" and types.count("completed") == 1, types
    assert [e["metrics"]["step"] for e in events if e["metrics"]] == list(range(1, 301))  # no step lost or repeated
    steps = [e["checkpoint"]["step"] for e in events if e["checkpoint"]]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert f"resumed run {run_id}" in (tmp_path / "trainer-2.log").read_text()
