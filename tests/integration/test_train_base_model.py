"""A run that fine-tunes a pretrained (tiny, test-written) Qwen3 checkpoint with LoRA on a dataset read from Kafka.

The dataset comes through the real pipeline; the run is the one `tracestream
train` starts. Its events count the examples cut to ``max_len``; its
completed event names the exported adapter and merged model with their
hashes, and `tracestream runs show` prints them; a broken checkpoint fails
the run before training with an event naming the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset.catalog import load_catalog
from dataset.snapshot import DatasetRequest
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from devtools.hf_checkpoints import read_tensors, write_checkpoint
from tests.integration.support import (
    cli,
    dataset_of,
    kafka_of,
    running_processors,
)
from tests.integration.test_train_run import CODEC, run_events
from trainer.checkpoint import sha256_dir
from trainer.data import read_examples, tokenize_counted
from trainer.hf import CheckpointError, inspect_checkpoint
from trainer.run import run_training

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

MAX_LEN = 40


async def test_lora_run_on_a_base_model_publishes_truncation_and_a_failed_event_for_a_broken_one(
        settings: Settings, tmp_path: Path):
    events = list(generate_events(60, seed=17, broken_share=0.0, kind="arith"))
    async with running_processors(settings):
        manifest = await dataset_of(settings, events, DatasetRequest("arith", split=Split(eval_share=0.1)))
    texts = [e.record["prompt"] for e in events] + [s["content"] for e in events for s in e.record["steps"]]
    model = write_checkpoint(tmp_path / "qwen3", "qwen3", texts=texts)
    config = {"base_model": {"path": str(model)}, "lora": {"rank": 4, "alpha": 8.0},
              "train": {"max_len": MAX_LEN, "batch_size": 4, "total_steps": 6, "warmup_steps": 1,
                        "learning_rate": 1e-2, "checkpoint_every": 3, "eval_max_new_tokens": 8}}

    outcome = await run_training(settings, kafka_of(settings), "arith", None, config, run_id="run-base",
                                 workdir=tmp_path / "run")
    assert outcome.status == "completed" and outcome.steps == 6

    # what the run should have counted, computed here from the same replay and tokenizer
    manifest = (await load_catalog(kafka_of(settings), settings.topics.datasets, CODEC)).get("arith", None).manifest
    train, evals = await read_examples(kafka_of(settings), manifest, CODEC)
    _, cut = tokenize_counted(train, MAX_LEN, inspect_checkpoint(model).tokenizer)
    assert 0 < cut <= len(train)

    run = await run_events(settings, "run-base")
    types = [e["event_type"] for e in run]
    assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types
    assert run[1]["truncated_examples"] == cut
    metrics = [e for e in run if e["event_type"] == "metrics"]
    assert [e["metrics"]["step"] for e in metrics] == list(range(1, 7))
    assert all(e["truncated_examples"] == cut for e in metrics)
    assert metrics[-1]["metrics"]["loss"] < metrics[0]["metrics"]["loss"]
    assert [e["checkpoint"]["step"] for e in run if e["event_type"] == "checkpoint"] == [3, 6]
    cfg = json.loads(run[0]["config"])
    assert cfg["base_model"] == {"path": str(model)} and cfg["lora"]["rank"] == 4 and cfg["max_len"] == MAX_LEN
    card = json.loads(run[-2]["scorecard"])
    assert card["truncated"]["train"] == cut and card["truncated"]["max_len"] == MAX_LEN
    assert card["items"] == len(evals) and card["loss"] > 0 and "baseline" in card
    assert all(s["loss"] > 0 and s["perplexity"] > 1 for s in card["by_source"].values())

    # the outputs: adapter and merged model, announced with their hashes on completed; runs show names them
    outputs = {o["kind"]: o for o in run[-1]["outputs"]}
    assert set(outputs) == {"adapter", "merged"} and outcome.outputs == tuple(run[-1]["outputs"])
    for o in outputs.values():
        assert o["path"] == str(tmp_path / "run" / "export" / o["kind"]) and o["sha256"] == sha256_dir(o["path"])
    assert all(e["outputs"] is None for e in run[:-1])
    assert inspect_checkpoint(outputs["merged"]["path"]).shape == inspect_checkpoint(model).shape
    shown = cli(settings, "runs", "show", "run-base")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = "".join(shown.stdout.split())  # rich may wrap long lines
    for o in outputs.values():
        assert f'"path":"{o["path"]}"' in printed and f'"sha256":"{o["sha256"]}"' in printed, shown.stdout

    # a checkpoint with a misshapen tensor: failed, naming file and tensor, before any step
    from safetensors.numpy import save_file

    tensors = read_tensors(model)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:8]
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj.weight"):
        await run_training(settings, kafka_of(settings), "arith", None, config, run_id="run-broken",
                           workdir=tmp_path / "broken")
    broken = await run_events(settings, "run-broken")
    assert [e["event_type"] for e in broken] == ["queued", "failed"]
    assert "model.safetensors: tensor model.layers.0.mlp.up_proj.weight has shape [8, 32]" in broken[-1]["error"]


async def test_two_ray_actors_fine_tune_a_base_model_on_the_single_process_curve(settings: Settings, ray_cluster,
                                                                                 tmp_path: Path):
    """LoRA on two Ray actors joined by jax.distributed, adapters and base weights sharded (FSDP), an odd batch
    (padded with masked rows): the in-process curve to float summation order (rtol 2e-5), and the outputs."""
    import asyncio

    import numpy as np

    from tests.integration.test_distributed_train import make_dataset
    from trainer.config import from_mapping
    from trainer.distributed import RayTrainer
    from trainer.loop import train_and_evaluate

    manifest = await make_dataset(settings)
    train, _ = await read_examples(kafka_of(settings), manifest, CODEC)
    model = write_checkpoint(tmp_path / "llama", "llama", texts=[e.prompt for e in train[:30]])
    config = {"base_model": {"path": str(model)}, "lora": {"rank": 4},
              "train": {"max_len": 64, "batch_size": 5, "total_steps": 4, "warmup_steps": 1, "learning_rate": 1e-2,
                        "eval_max_new_tokens": 4, "fsdp": True}}
    preset = from_mapping(config)
    single = await asyncio.to_thread(train_and_evaluate, preset.model, preset.train, train, [], None,
                                     base=preset.base, lora=preset.lora)
    trainer = RayTrainer(preset, kafka_of(settings), manifest, tmp_path / "run", workers=2,
                         run_id=f"base-{settings.app_id}", compilation_cache=settings.cache_dir / "jax")
    try:
        counts = await asyncio.to_thread(trainer.start)
        assert counts.model["family"] == "llama" and counts.max_len == 64
        result = await asyncio.to_thread(trainer.train)
    finally:
        trainer.shutdown()
    assert result.step == 4 and result.scorecard["truncated"]["max_len"] == 64
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "4"
    assert sorted(o["kind"] for o in result.outputs) == ["adapter", "merged"]
    np.testing.assert_allclose([m["loss"] for m in result.history], [m["loss"] for m in single.history], rtol=2e-5)
