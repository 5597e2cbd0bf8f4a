"""`tracestream runs list` in an 80-column terminal: statuses whole, ids shortened in a way `runs show` takes back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.topics import ensure_pipeline_topics
from tests.integration.support import REPO, kafka_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
# Two ids share their first 8 characters, as uuids sometimes do; the third is the trainer service's kind.
RUNS = {
    "5f0e8a1c2b3d4e5f6a7b8c9d0e1f2a3b": ["queued", "started", "metrics", "evaluated", "completed"],
    "5f0e8a1c99999999999999999999ffff": ["queued", "started", "cancel_requested"],
    "reasoning-distilled-gsm8k-large-v12-p0o31337": ["queued", "started", "failed"],
}


def _event(run_id: str, event_type: str, i: int) -> dict:
    event = {"run_id": run_id, "event_type": event_type, "at": T0 + timedelta(seconds=i),
             "dataset_name": "reasoning-distilled-gsm8k-large", "dataset_version": 12, "dataset_sha256": "ab" * 32,
             "config": '{"preset":"tiny"}', "seed": 7, "workers": 2}
    if event_type == "metrics":
        event["metrics"] = {"step": 800, "loss": 0.123456789, "learning_rate": 1e-3, "grad_norm": 0.5,
                            "tokens_per_s": 1000.0}
    if event_type == "evaluated":
        event["scorecard"] = '{"exact_match": 0.996}'
    if event_type == "failed":
        event["error"] = "dataset expired"
    return event


async def _publish_runs(settings: Settings) -> None:
    codec = AvroCodec(default_registry())
    await ensure_pipeline_topics(settings, kafka_of(settings))
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for run_id, types in RUNS.items():
            for i, event_type in enumerate(types):
                await producer.send_and_wait(settings.topics.runs, codec.encode(_event(run_id, event_type, i),
                                                                                "RunEvent"), key=run_id.encode())
    finally:
        await producer.stop()


def runs_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """The command as run in an 80-column terminal (or a CI log that says it has 80 columns)."""
    return subprocess.run([sys.executable, "-m", "cli.main", "runs", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False, env={**settings.child_environment(), "COLUMNS": "80"})


def test_runs_list_at_80_columns_and_runs_show_by_the_ids_it_shows(settings: Settings):
    asyncio.run(_publish_runs(settings))
    listed = runs_cli(settings, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, listed.stdout
    rows = {line.split()[1]: line.split()[0] for line in lines if line.split()[1:2]
            and line.split()[1] in ("completed", "cancelling", "failed")}
    assert set(rows) == {"completed", "cancelling", "failed"}, listed.stdout  # each status whole
    assert "0.1235" in listed.stdout and "800" in listed.stdout and "0.996" in listed.stdout
    assert any("…" in shown for shown in rows.values())  # the long ids are shortened, not cut

    by_status = {"completed": "5f0e8a1c2b3d4e5f6a7b8c9d0e1f2a3b", "cancelling": "5f0e8a1c99999999999999999999ffff",
                 "failed": "reasoning-distilled-gsm8k-large-v12-p0o31337"}
    for status, shown in rows.items():  # as pasted from the table
        show = runs_cli(settings, "show", shown)
        assert show.returncode == 0, show.stderr
        assert f'"run_id": "{by_status[status]}"' in show.stdout

    prefix = runs_cli(settings, "show", "reason")
    assert prefix.returncode == 0 and '"status": "failed"' in prefix.stdout

    ambiguous = runs_cli(settings, "show", "5f0e8a1c")
    assert ambiguous.returncode == 2
    message = " ".join(ambiguous.stderr.split())
    assert "5f0e8a1c matches 2 runs: 5f0e8a1c2b3d4e5f6a7b8c9d0e1f2a3b, 5f0e8a1c99999999999999999999ffff" in message

    unknown = runs_cli(settings, "cancel", "nosuchrun")
    assert unknown.returncode == 2
    assert f"no run 'nosuchrun' on {settings.topics.runs}" in " ".join(unknown.stderr.split())
