"""The driver dies (SIGKILL) mid-run; `tracestream train --run-id` again resumes from the checkpoint.

No metrics step is published twice or lost across the two processes, and the
loss curve is the one an uninterrupted run gives.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset.snapshot import DatasetRequest
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from tests.integration.support import (
    REPO,
    cli,
    dataset_of,
    kafka_of,
    running_processors,
)
from tests.integration.test_train_run import run_events
from trainer.config import from_mapping
from trainer.data import read_examples
from trainer.loop import train_and_evaluate

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

CODEC = AvroCodec(default_registry())
CONFIG = {"preset": "tiny", "train": {"total_steps": 150, "checkpoint_every": 10, "eval_max_new_tokens": 8}}


async def test_rerun_after_the_driver_was_killed_continues_without_repeating_a_step(settings: Settings,
                                                                                    tmp_path: Path):
    async with running_processors(settings):
        manifest = await dataset_of(settings, generate_events(40, seed=2, broken_share=0.0), DatasetRequest("resume"))
    config = tmp_path / "run.json"
    config.write_text(json.dumps(CONFIG))
    args = ["train", "resume", "--config", str(config), "--run-id", "resume-run"]

    first = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=settings.child_environment(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not [e for e in await run_events(settings, "resume-run") if e["metrics"] and e["metrics"]["step"] >= 25]:
            assert first.poll() is None, "the first run ended before it could be killed"
            await asyncio.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = await run_events(settings, "resume-run")
    killed_at = max(e["metrics"]["step"] for e in before if e["metrics"])
    assert killed_at < 150 and before[-1]["event_type"] in {"metrics", "checkpoint"}

    second = await asyncio.to_thread(cli, settings, *args)
    assert second.returncode == 0, second.stdout + second.stderr

    events = await run_events(settings, "resume-run")
    types = [e["event_type"] for e in events]
    assert types.count("queued") == 2 and types[-2:] == ["evaluated", "completed"], types
    metrics = [e["metrics"] for e in events if e["metrics"]]
    assert [m["step"] for m in metrics] == list(range(1, 151)), second.stderr[-3000:]  # none repeated, none lost across the kill
    checkpoints = [e["checkpoint"]["step"] for e in events if e["checkpoint"]]
    assert checkpoints == list(range(10, 151, 10))

    preset = from_mapping(CONFIG)
    train, _ = await read_examples(kafka_of(settings), manifest, CODEC)
    whole = await asyncio.to_thread(train_and_evaluate, preset.model, preset.train, train, [], None)
    np.testing.assert_allclose([m["loss"] for m in metrics], [m["loss"] for m in whole.history], rtol=1e-6)
