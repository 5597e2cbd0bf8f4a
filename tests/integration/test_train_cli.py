"""`tracestream train --workers 2` as a user runs it: events in order, materialized; `runs cancel` refusals.

The CLI runs as a child process (it starts its own local Ray); the
processors run in this test process and materialize runs.events.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dataset.snapshot import DatasetRequest
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.support import (
    cli,
    dataset_of,
    kafka_of,
    running_processors,
)
from tests.integration.test_train_run import run_events

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

CODEC = AvroCodec(default_registry())


def said(done) -> str:
    """What a command printed, with rich's line wrapping undone."""
    return " ".join((done.stdout + done.stderr).split())


async def test_train_with_two_workers_end_to_end(settings: Settings, tmp_path: Path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "train": {"total_steps": 12, "checkpoint_every": 4,
                                                              "eval_max_new_tokens": 8}}))
    async with running_processors(settings) as processors:
        manifest = await dataset_of(settings, generate_events(60, seed=9, broken_share=0.0),
                                    DatasetRequest("cli", split=Split(eval_share=0.1)))

        done = await asyncio.to_thread(cli, settings, "train", "cli", "--workers", "2", "--config", str(config),
                                       "--run-id", "cli-run")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "run cli-run completed: 12 steps on 2 worker(s)" in said(done), said(done)

        events = await run_events(settings, "cli-run")
        types = [e["event_type"] for e in events]
        assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types
        metrics = [e["metrics"] for e in events if e["event_type"] == "metrics"]
        assert [m["step"] for m in metrics] == list(range(1, 13))
        assert metrics[-1]["loss"] < metrics[0]["loss"]
        assert [e["checkpoint"]["step"] for e in events if e["event_type"] == "checkpoint"] == [4, 8, 12]
        assert {(e["workers"], e["dataset_sha256"]) for e in events} == {(2, manifest.content_sha256)}

        await wait_until_caught_up(settings, kafka_of(settings))
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT event_type, workers FROM `{w.database}`.runs FINAL WHERE run_id = 'cli-run' ORDER BY offset"))
        curve = await processors.writer.run(lambda w: w.query(
            f"SELECT step, loss FROM `{w.database}`.run_metrics FINAL WHERE run_id = 'cli-run' ORDER BY step"))
    assert [r[0] for r in rows] == types and {r[1] for r in rows} == {2}
    assert curve == [(m["step"], m["loss"]) for m in metrics]

    listed = cli(settings, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["run_id"] == "cli-run"]
    assert (row["status"], row["workers"], row["steps"]) == ("completed", 2, 12)

    finished = cli(settings, "runs", "cancel", "cli-run")
    assert finished.returncode == 2 and "already ended: completed" in said(finished)
    unknown = cli(settings, "runs", "cancel", "no-such-run")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in said(unknown)
    assert [e["event_type"] for e in await run_events(settings, "cli-run")] == types  # nothing published


async def test_cancel_through_the_cli_is_answered_by_the_running_run(settings: Settings, tmp_path: Path):
    """A local (one-worker) run started by the CLI stops on `runs cancel`, and says so on runs.events."""
    async with running_processors(settings):
        await dataset_of(settings, generate_events(30, seed=3, broken_share=0.0), DatasetRequest("long"))
    config = tmp_path / "long.json"
    config.write_text(json.dumps({"preset": "tiny", "train": {"total_steps": 100000, "checkpoint_every": 100000}}))
    training = asyncio.create_task(asyncio.to_thread(cli, settings, "train", "long", "--config", str(config),
                                                     "--run-id", "long-run"))
    while not [e for e in await run_events(settings, "long-run") if e["metrics"]]:
        assert not training.done(), said(training.result())
        await asyncio.sleep(0.2)

    cancel = cli(settings, "runs", "cancel", "long-run")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    done = await asyncio.wait_for(training, timeout=120)
    assert done.returncode == 3 and "run cancelled" in said(done), said(done)

    types = [e["event_type"] for e in await run_events(settings, "long-run")]
    assert types[-1] == "cancelled" and "cancel_requested" in types and "completed" not in types, types
    async with running_processors(settings) as processors:  # the new event type is materialized like any other
        await wait_until_caught_up(settings, kafka_of(settings))
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT event_type FROM `{w.database}`.runs FINAL WHERE run_id = 'long-run' ORDER BY offset"))
    assert [r[0] for r in rows] == types
    shown = cli(settings, "runs", "show", "long-run")
    assert shown.returncode == 0 and '"status": "cancelled"' in shown.stdout, shown.stdout
    again = cli(settings, "runs", "cancel", "long-run")
    assert again.returncode == 2 and "already ended: cancelled" in said(again)
