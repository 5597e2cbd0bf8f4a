"""A LoRA run's outputs: the adapter (PEFT names, adapter tensors only) and the merged Hugging Face directory,
which reloads through the same loader and gives the adapted model's logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from devtools.generator import generate_events
from devtools.hf_checkpoints import read_tensors, write_checkpoint
from trainer.checkpoint import sha256_dir
from trainer.config import DEFAULT_LORA_TARGETS, from_mapping
from trainer.data import examples_from_records
from trainer.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from trainer.hf import inspect_checkpoint
from trainer.lm import build_lm
from trainer.loop import train_and_evaluate

pytestmark = pytest.mark.unit

LOGITS_ATOL = 1e-4
"""Merged vs adapted logits, float32: the merge adds ``alpha / r * B @ A`` once instead of per token."""


def arith(n: int, seed: int = 3):
    return examples_from_records(e.record for e in generate_events(n, seed=seed, broken_share=0.0, kind="arith"))


def config(path: Path, lora) -> dict:
    return {"base_model": {"path": str(path)}, "lora": lora,
            "train": {"max_len": 64, "batch_size": 4, "total_steps": 3, "warmup_steps": 1, "learning_rate": 3e-2,
                      "checkpoint_every": 3, "eval_max_new_tokens": 4}}


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama", "gemma3_text"])
def test_lora_run_exports_an_adapter_and_a_merged_model_that_reloads_with_the_same_logits(tmp_path, family):
    train = arith(16)
    texts = [t for e in train for t in (e.prompt, e.completion)]
    base = write_checkpoint(tmp_path / "base", family, texts=texts, layers=7 if family == "gemma3_text" else 2)
    lora = {"rank": 4, "alpha": 8.0}
    preset = from_mapping(config(base, lora))
    result = train_and_evaluate(preset.model, preset.train, train, [], tmp_path / "run", base=preset.base,
                                lora=preset.lora)
    outputs = {o["kind"]: o for o in result.outputs}
    assert set(outputs) == {"adapter", "merged"}
    for o in outputs.values():
        assert Path(o["path"]).parent == tmp_path / "run" / "export" and o["sha256"] == sha256_dir(o["path"])
    adapter, merged = Path(outputs["adapter"]["path"]), Path(outputs["merged"]["path"])

    # the adapted model (the run's final adapters on the base weights) ...
    lm = build_lm(preset)
    ids = jnp.asarray([lm.tokenizer.encode_prompt("What is 37 + 48? And 12 + 5?", 48)])
    adapted = np.asarray(lm.apply(result.state.params, ids, lm.frozen))
    plain = np.asarray(lm.apply(lm.params, ids, lm.frozen))  # B = 0 at init: the base model
    assert np.abs(adapted - plain).max() > 10 * LOGITS_ATOL  # the adapters moved it, so the check below means something

    # ... and the merged directory, loaded as a base model by the same loader, without LoRA
    assert sorted(p.name for p in merged.iterdir()) == sorted(p.name for p in base.iterdir())
    assert json.loads((merged / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert inspect_checkpoint(merged).shape == inspect_checkpoint(base).shape
    full = build_lm(from_mapping(config(merged, None)))
    np.testing.assert_allclose(np.asarray(full.apply(full.params, ids, full.frozen)), adapted, atol=LOGITS_ATOL,
                               rtol=0)

    # the adapter holds adapter tensors only, under PEFT's names, and W + alpha/r * B @ A is the merged weight
    assert sorted(p.name for p in adapter.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    layers = 7 if family == "gemma3_text" else 2
    assert len(tensors) == 2 * layers * len(DEFAULT_LORA_TARGETS)
    pattern = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight")
    assert all(pattern.fullmatch(k) for k in tensors), sorted(tensors)[:4]
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["peft_type"] == "LORA"
    assert sorted(cfg["target_modules"]) == sorted(DEFAULT_LORA_TARGETS)
    assert cfg["base_model_name_or_path"] == str(base) and cfg["base_model_sha256"] == sha256_dir(base)
    before, after = read_tensors(base), read_tensors(merged)
    assert set(before) == set(after)
    for name in ("model.layers.1.self_attn.k_proj", "model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"):
        a, b = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
        assert a.shape[0] == 4 and b.shape[1] == 4
        np.testing.assert_allclose(after[name + ".weight"], before[name + ".weight"] + 2.0 * b @ a, atol=1e-6)
    np.testing.assert_array_equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_full_fine_tune_exports_the_model_that_reloads_with_the_same_logits(tmp_path, family):
    train = arith(8)
    base = write_checkpoint(tmp_path / "base", family, texts=[t for e in train for t in (e.prompt, e.completion)],
                            layers=7 if family == "gemma3_text" else 2)
    preset = from_mapping(config(base, {"rank": 2}))
    assert train_and_evaluate(preset.model, preset.train, train, [], None, base=preset.base,
                              lora=preset.lora).outputs == []  # nothing without a workdir
    preset = from_mapping(config(base, None))
    result = train_and_evaluate(preset.model, preset.train, train, [], tmp_path / "full", base=preset.base)
    assert [o["kind"] for o in result.outputs] == ["model"]
    model = Path(result.outputs[0]["path"])
    assert model == tmp_path / "full" / "export" / "model" and result.outputs[0]["sha256"] == sha256_dir(model)
    lm = build_lm(preset)
    ids = jnp.asarray([lm.tokenizer.encode_prompt("What is 37 + 48?", 48)])
    trained = np.asarray(lm.apply(result.state.params, ids, lm.frozen))
    assert np.abs(trained - np.asarray(lm.apply(lm.params, ids, lm.frozen))).max() > 10 * LOGITS_ATOL
    again = build_lm(from_mapping(config(model, None)))
    np.testing.assert_allclose(np.asarray(again.apply(again.params, ids, again.frozen)), trained,
                               atol=LOGITS_ATOL, rtol=0)
    assert sorted(read_tensors(model)) == sorted(read_tensors(base))
