"""Data-parallel training on Ray actors against a real dataset on the real broker.

- 2 actors joined into one JAX mesh by ``jax.distributed`` (Gloo), on the same global batch and seed,
  follow the single-process loss curve to float summation order (rtol 2e-5);
- an actor killed mid-run is replaced from the last checkpoint: every metrics step is on
  runs.events exactly once, and the curve is the uninterrupted one;
- a ``cancel_requested`` event stops the run: ``cancelled`` is published and the actors are gone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import ray

from dataset.manifest import Manifest
from dataset.snapshot import DatasetRequest
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from tests.integration.support import dataset_of, kafka_of, running_processors
from tests.integration.test_train_run import run_events
from trainer.config import ConfigError, from_mapping
from trainer.data import read_examples
from trainer.distributed import NAMESPACE, RayTrainer, actor_name
from trainer.loop import train_and_evaluate
from trainer.run import RunCancelled, run_training
from trainer.runlog import request_cancel

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

CODEC = AvroCodec(default_registry())


async def make_dataset(settings: Settings, n: int = 60, name: str = "sft") -> Manifest:
    async with running_processors(settings):
        return await dataset_of(settings, generate_events(n, seed=5, broken_share=0.0),
                                DatasetRequest(name, split=Split(eval_share=0.1)))


async def reference_losses(settings: Settings, manifest: Manifest, config: dict) -> list[float]:
    """The single-process loop's loss per micro-step on the same data: the curve every run must follow."""
    preset = from_mapping(config)
    train, _ = await read_examples(kafka_of(settings), manifest, CODEC)
    result = await asyncio.to_thread(train_and_evaluate, preset.model, preset.train, train, [], None)
    return [m["loss"] for m in result.history]


def actor_alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


async def test_two_actors_follow_the_single_process_curve(settings: Settings, ray_cluster, tmp_path: Path):
    """N=1 is the in-process loop (what ``run_training`` runs for one worker); N=2 runs on Ray."""
    manifest = await make_dataset(settings)
    config = {"preset": "tiny", "train": {"total_steps": 8, "warmup_steps": 2, "batch_size": 6,
                                          "eval_max_new_tokens": 8}}
    expected = await reference_losses(settings, manifest, config)
    trainer = RayTrainer(from_mapping(config), kafka_of(settings), manifest, tmp_path, workers=2,
                         run_id=f"equiv-{settings.app_id}", compilation_cache=settings.cache_dir / "jax")
    try:
        counts = await asyncio.to_thread(trainer.start)
        assert counts.train == manifest.train_count and counts.eval == manifest.eval_count
        result = await asyncio.to_thread(trainer.train)
    finally:
        trainer.shutdown()
    assert [m["micro_step"] for m in result.history] == list(range(1, 9))
    assert result.step == 8 and result.checkpoint == tmp_path / "checkpoints" / "8"
    assert result.scorecard["items"] == manifest.eval_count
    assert expected[-1] < expected[0]
    np.testing.assert_allclose([m["loss"] for m in result.history], expected, rtol=2e-5)


async def test_killed_actor_is_replaced_and_no_step_is_lost_or_repeated(settings: Settings, ray_cluster,
                                                                        tmp_path: Path):
    manifest = await make_dataset(settings)
    config = {"preset": "tiny", "train": {"total_steps": 40, "warmup_steps": 4, "checkpoint_every": 5,
                                          "eval_max_new_tokens": 8}}
    expected = await reference_losses(settings, manifest, config)
    run_id = f"kill-{settings.app_id}"
    seen_before_kill = []

    async def kill_rank1_after_step_6() -> None:
        while True:
            steps = [e["metrics"]["step"] for e in await run_events(settings, run_id) if e["metrics"]]
            if steps and steps[-1] >= 6:
                seen_before_kill.append(steps[-1])
                ray.kill(ray.get_actor(actor_name(run_id, 1, 1), namespace=NAMESPACE), no_restart=True)
                return
            await asyncio.sleep(0.05)

    killer = asyncio.create_task(kill_rank1_after_step_6())
    outcome = await run_training(settings, kafka_of(settings), manifest.name, None, config, run_id=run_id,
                                 workdir=tmp_path / "run", workers=2)
    await killer
    assert seen_before_kill[0] < 40
    assert outcome.status == "completed" and outcome.steps == 40 and outcome.restarts == 1

    events = await run_events(settings, run_id)
    types = [e["event_type"] for e in events]
    assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types
    metrics = [e["metrics"] for e in events if e["event_type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 41))  # none lost, none repeated across the restart
    np.testing.assert_allclose([m["loss"] for m in metrics], expected, rtol=2e-5)
    checkpoints = [e["checkpoint"]["step"] for e in events if e["event_type"] == "checkpoint"]
    assert checkpoints == list(range(5, 41, 5))
    assert {e["workers"] for e in events} == {2}
    # the replacements are the second attempt's actors; all of them are gone after the run
    assert not any(actor_alive(actor_name(run_id, rank, attempt)) for rank in (0, 1) for attempt in (1, 2, 3))


async def test_cancel_request_stops_the_actors_and_publishes_cancelled(settings: Settings, ray_cluster,
                                                                      tmp_path: Path):
    manifest = await make_dataset(settings)
    config = {"preset": "tiny", "train": {"total_steps": 2000, "checkpoint_every": 1000}}
    run_id = f"cancel-{settings.app_id}"
    run = asyncio.create_task(run_training(settings, kafka_of(settings), manifest.name, None, config,
                                           run_id=run_id, workdir=tmp_path / "run", workers=2))
    while not [e for e in await run_events(settings, run_id) if e["metrics"]]:
        assert not run.done(), run
        await asyncio.sleep(0.1)
    assert actor_alive(actor_name(run_id, 0, 1)) and actor_alive(actor_name(run_id, 1, 1))
    await request_cancel(kafka_of(settings), settings.topics.runs, run_id, CODEC)
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(run, timeout=60)

    events = await run_events(settings, run_id)
    types = [e["event_type"] for e in events]
    assert types[-1] == "cancelled" and "cancel_requested" in types and "completed" not in types, types
    steps = [e["metrics"]["step"] for e in events if e["metrics"]]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] < 2000
    assert not actor_alive(actor_name(run_id, 0, 1)) and not actor_alive(actor_name(run_id, 1, 1))


async def test_workers_beyond_the_batch_size_are_refused(tmp_path: Path):
    preset = from_mapping({"train": {"batch_size": 2}})
    with pytest.raises(ConfigError, match=r"workers \(3\) must not exceed TrainConfig.batch_size \(2\)"):
        RayTrainer(preset, "unused:9092", None, tmp_path, workers=3, run_id="r")
