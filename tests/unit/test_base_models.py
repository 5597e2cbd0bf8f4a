"""Pretrained checkpoints: tiny Qwen3 / Qwen2 / Llama directories written here load, match a reference
forward pass, tokenize with their own template, train with LoRA or fully, resume, and fail clearly when broken."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devtools.generator import generate_events
from devtools.hf_checkpoints import (
    gemma3_reference_logits,
    read_tensors,
    reference_logits,
    write_checkpoint,
)
from trainer.config import DEFAULT_LORA_TARGETS, ConfigError, LoraConfig, from_mapping
from trainer.data import Example, examples_from_records, tokenize_counted
from trainer.hf import CheckpointError, inspect_checkpoint
from trainer.lm import build_lm
from trainer.loop import train_and_evaluate

pytestmark = pytest.mark.unit

FAMILIES = ("qwen3", "qwen2", "llama", "gemma3_text")


def arith(n: int, seed: int = 3) -> list[Example]:
    return examples_from_records(e.record for e in generate_events(n, seed=seed, broken_share=0.0, kind="arith"))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [t for e in arith(60, seed=5) for t in (e.prompt, e.completion)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    # Gemma 3 gets seven layers: five sliding-window ones, a global one, and one more sliding
    return {f: write_checkpoint(root / f, f, texts=corpus, seed=i, layers=7 if f == "gemma3_text" else 2)
            for i, f in enumerate(FAMILIES)}


def config(path: Path, **extra) -> dict:
    return {"base_model": {"path": str(path)}, "train": {"max_len": 96, "batch_size": 4, "total_steps": 8,
                                                           "warmup_steps": 1, "learning_rate": 1e-2,
                                                           "checkpoint_every": 4, "eval_max_new_tokens": 8},
            **extra}


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_model_matches_a_reference_forward_pass(checkpoints, family):
    path = checkpoints[family]
    lm = build_lm(from_mapping(config(path, lora=None)))
    assert lm.info["family"] == family and lm.info["trainable_params"] == lm.info["total_params"]
    ids = lm.tokenizer.encode_prompt("What is 37 + 48?", 64)
    got = np.asarray(lm.apply(lm.params, jnp.asarray([ids]), lm.frozen))[0]
    reference = gemma3_reference_logits if family == "gemma3_text" else reference_logits
    np.testing.assert_allclose(got, reference(path, ids), atol=2e-4, rtol=0)


def test_gemma3_lora_targets_use_hugging_face_names(checkpoints):
    lm = build_lm(from_mapping(config(checkpoints["gemma3_text"], lora={"targets": ["q_proj", "v_proj", "o_proj"]})))
    wrapped = {str(p[-2].key) for p, _ in jax.tree_util.tree_flatten_with_path(lm.params)[0]}
    assert wrapped == {"q_einsum", "kv_einsum", "attn_vec_einsum"}  # Tunix fuses k and v
    tok = lm.tokenizer
    enc = tok.encode_example("What is 1 + 2?", "<answer>3</answer>", 64)
    assert tok.tokenizer.decode(list(enc.tokens[enc.tokens != tok.pad_id]), skip_special_tokens=False) == (
        "<bos><start_of_turn>user\nWhat is 1 + 2?<end_of_turn>\n<start_of_turn>model\n<answer>3</answer><end_of_turn>\n")
    assert tok.decode(list(enc.tokens[enc.loss_mask == 1])) == "<answer>3</answer>"  # stops at <end_of_turn>


def test_llama_rope_theta_and_llama3_scaling_are_honoured(tmp_path, corpus):
    """Tunix 0.1.7's Llama ignores rope_theta and rope_scaling; the trainer puts them back."""
    path = write_checkpoint(tmp_path / "llama", "llama", texts=corpus, tied=True)  # as Llama 3.2 1B/3B
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    (path / "config.json").write_text(json.dumps(cfg))
    lm = build_lm(from_mapping(config(path)))
    ids = lm.tokenizer.encode_prompt("What is 37 + 48? " * 3, 64)
    got = np.asarray(lm.apply(lm.params, jnp.asarray([ids]), lm.frozen))[0]
    np.testing.assert_allclose(got, reference_logits(path, ids), atol=2e-4, rtol=0)


def test_lora_adapters_start_at_the_base_model_and_are_all_that_trains(checkpoints):
    path = checkpoints["qwen3"]
    lm = build_lm(from_mapping(config(path)))
    assert tuple(lm.info["lora"]["targets"]) == DEFAULT_LORA_TARGETS
    names = {str(p[-1].key) for p, _ in jax.tree_util.tree_flatten_with_path(lm.params)[0]}
    assert names == {"w_lora_a", "w_lora_b", "kernel_lora_a", "kernel_lora_b"}  # Einsum and Linear projections
    frozen = {".".join(str(k.key) for k in p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(lm.frozen)[0]}
    tensors = read_tensors(path)
    # the loaded base weights are the safetensors tensors (transposed/reshaped into Tunix's layout)
    np.testing.assert_array_equal(frozen["embedder.input_embedding"], tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(frozen["layers.1.mlp.down_proj.kernel"], tensors["model.layers.1.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(frozen["layers.0.attn.q_norm.w"], tensors["model.layers.0.self_attn.q_norm.weight"])
    # B starts at zero: the adapted model is the base model until it trains
    full = build_lm(from_mapping(config(path, lora=None)))
    ids = jnp.asarray([lm.tokenizer.encode_prompt("What is 1 + 2?", 32)])
    np.testing.assert_allclose(lm.apply(lm.params, ids, lm.frozen), full.apply(full.params, ids, full.frozen),
                               atol=1e-5)


def test_lora_run_learns_keeps_base_weights_and_resumes_the_same_curve(checkpoints, tmp_path):
    path = checkpoints["qwen3"]
    preset = from_mapping(config(path, lora={"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "up_proj"]}))
    train, evals = arith(24), arith(4, seed=9)
    started = []
    whole = train_and_evaluate(preset.model, preset.train, train, evals, None, base=preset.base, lora=preset.lora,
                               on_started=started.append)
    assert started[0]["truncated"] == 0 and started[0]["kind"] == "base" and started[0]["max_len"] == 96
    assert started[0]["trainable_params"] < started[0]["total_params"] / 5
    losses = [m["loss"] for m in whole.history]
    assert len(losses) == 8 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert whole.scorecard["items"] == 4 and whole.scorecard["loss"] > 0
    assert whole.scorecard["truncated"]["train"] == 0 and whole.scorecard["truncated"]["max_len"] == 96

    class Crash(Exception):
        pass

    def crash_at_6(m):
        if m["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        train_and_evaluate(preset.model, preset.train, train, [], tmp_path, base=preset.base, lora=preset.lora,
                           on_metrics=crash_at_6)
    resumed = train_and_evaluate(preset.model, preset.train, train, [], tmp_path, base=preset.base,
                                 lora=preset.lora)
    assert resumed.resumed_from == 4
    np.testing.assert_allclose([m["loss"] for m in resumed.history], losses[4:], rtol=0, atol=0)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(whole.state.params)):
        np.testing.assert_array_equal(a, b)
    # the checkpoint holds the adapters (and their optimizer state) only, no base weight
    blobs = b"".join(f.read_bytes() for f in (tmp_path / "checkpoints" / "8").rglob("*") if f.is_file())
    assert b"lora_a" in blobs and b"input_embedding" not in blobs and b"down_proj.kernel" not in blobs
    # the base weights never moved: a fresh load gives the same frozen tree as the safetensors
    lm = build_lm(preset)
    np.testing.assert_array_equal(lm.frozen["embedder"]["input_embedding"],
                                  read_tensors(path)["model.embed_tokens.weight"])


def test_full_fine_tuning_trains_every_weight(checkpoints):
    preset = from_mapping(config(checkpoints["llama"], lora=None))
    assert preset.lora is None
    result = train_and_evaluate(preset.model, preset.train, arith(16), [], None, base=preset.base)
    losses = [m["loss"] for m in result.history]
    assert losses[-1] < losses[0], losses
    before = read_tensors(checkpoints["llama"])["model.embed_tokens.weight"]
    assert not np.array_equal(np.asarray(result.state.params["embedder"]["input_embedding"]), before)


def test_chat_template_rendering_and_completion_only_mask(checkpoints):
    tok = inspect_checkpoint(checkpoints["qwen3"]).tokenizer
    enc = tok.encode_example("What is 1 + 2?", "<answer>3</answer>", 64)
    text = tok.tokenizer.decode(list(enc.tokens[enc.tokens != tok.pad_id]), skip_special_tokens=False)
    assert text == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n<answer>3</answer><|im_end|>\n"
    learned = tok.tokenizer.decode(list(enc.tokens[enc.loss_mask == 1]), skip_special_tokens=False)
    assert learned == "<answer>3</answer><|im_end|>\n" and not enc.truncated
    llama = inspect_checkpoint(checkpoints["llama"]).tokenizer
    enc = llama.encode_example("Hi", " <answer>3</answer> ", 64)
    assert llama.tokenizer.decode(list(enc.tokens[enc.loss_mask == 1]), skip_special_tokens=False) == (
        "<answer>3</answer><|eot_id|>")
    assert llama.tokenizer.decode(list(enc.tokens[:1]), skip_special_tokens=False) == "<|begin_of_text|>"


def test_without_a_template_the_tunix_sft_pair_ends_with_eos(tmp_path, corpus):
    path = write_checkpoint(tmp_path / "plain", "qwen3", texts=corpus, chat_template=False)
    tok = inspect_checkpoint(path).tokenizer
    enc = tok.encode_example("What is 1 + 2?", "<answer>3</answer>", 64)
    assert tok.tokenizer.decode(list(enc.tokens[enc.loss_mask == 1]), skip_special_tokens=False) == (
        "<answer>3</answer><|im_end|>")
    assert tok.decode(list(enc.tokens[enc.loss_mask == 1])) == "<answer>3</answer>"


def test_truncation_cuts_the_prompt_first_then_the_completion_and_counts(checkpoints):
    tok = inspect_checkpoint(checkpoints["qwen3"]).tokenizer
    p, c = tok.split("What is 12 + 34? " * 4, "<answer>46</answer>")
    fits = tok.encode_example("What is 12 + 34? " * 4, "<answer>46</answer>", len(p) + len(c))
    assert not fits.truncated and fits.loss_mask.sum() == len(c)
    cut = tok.encode_example("What is 12 + 34? " * 4, "<answer>46</answer>", len(c) + 3)
    assert cut.truncated and cut.loss_mask.sum() == len(c)  # whole completion, 3 prompt tokens: its end
    assert list(cut.tokens[:3]) == p[-3:]
    tiny = tok.encode_example("What is 12 + 34?", "<answer>46</answer>", 4)
    assert tiny.truncated and list(tiny.tokens) == c[:4] and tiny.loss_mask.tolist() == [1, 1, 1, 1]
    examples = [Example("What is 12 + 34? " * 4, "<answer>46</answer>", "46", "s"), Example("1+1?", "2", "2", "s")]
    short = sum(map(len, tok.split("1+1?", "2")))
    arrays, truncated = tokenize_counted(examples, short, tok)
    assert truncated == 1 and arrays["tokens"].shape == (2, short)


def test_config_mapping_for_base_models(tmp_path):
    p = from_mapping({"base_model": {"path": "/models/q"}, "train": {"max_len": 300}})
    assert p.lora == LoraConfig() and p.max_len == 300
    assert from_mapping({"base_model": {"path": "/m"}}).max_len == 512
    assert from_mapping({"base_model": {"path": "/m"}, "lora": None}).lora is None
    assert from_mapping({"base_model": {"path": "/m"}, "lora": {"rank": 2}}).lora.rank == 2
    assert from_mapping({"train": {"max_len": 64}}).model.max_len == 64  # the byte model's positions follow
    for bad, needle in [({"base_model": {"path": "/m"}, "model": {"d_model": 8}}, "architecture"),
                        ({"lora": {"rank": 2}}, "needs a base_model"),
                        ({"base_model": {"path": "/m"}, "lora": {"rank": 0}}, "LoraConfig.rank"),
                        ({"base_model": {"path": "/m"}, "lora": {"targets": []}}, "LoraConfig.targets"),
                        ({"base_model": {"dir": "/m"}}, "dir"),
                        ({"train": {"max_len": 2}}, "TrainConfig.max_len")]:
        with pytest.raises(ConfigError, match=needle):
            from_mapping(bad)


def test_unknown_lora_target_is_refused(checkpoints):
    with pytest.raises(ConfigError, match=r"lora.targets \['wq'\]"):
        build_lm(from_mapping(config(checkpoints["qwen3"], lora={"targets": ["q_proj", "wq"]})))


def broken(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoints_fail_naming_the_file_and_tensor(checkpoints, tmp_path):
    src = checkpoints["qwen3"]
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nowhere")

    d = broken(src, tmp_path / "type")
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'mamba' is not supported"):
        inspect_checkpoint(d)

    d = broken(src, tmp_path / "notok")
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"notok/tokenizer.json is missing"):
        inspect_checkpoint(d)

    d = broken(src, tmp_path / "special")
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>"}))
    with pytest.raises(CheckpointError, match=r"has no token '<\|eot_id\|>'.*eos_token"):
        inspect_checkpoint(d)

    from safetensors.numpy import save_file

    d = broken(src, tmp_path / "shape")
    tensors = read_tensors(d)
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape/model.safetensors: tensor model.layers.1.self_attn.k_proj.weight "
                                              r"has shape \[8, 32\], config.json implies \[16, 32\]"):
        inspect_checkpoint(d)

    d = broken(src, tmp_path / "missing")
    tensors = read_tensors(d)
    del tensors["model.layers.0.self_attn.q_norm.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor model.layers.0.self_attn.q_norm.weight is missing"):
        inspect_checkpoint(d)

    d = broken(src, tmp_path / "shards")
    tensors = read_tensors(d)
    (d / "model.safetensors").unlink()
    names = sorted(tensors)
    half = {n: tensors[n] for n in names[: len(names) // 2]}
    save_file(half, str(d / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {n: "model-00001-of-00002.safetensors" if n in half else "model-00002-of-00002.safetensors"
                            for n in names}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002.safetensors is missing: .* puts tensor"):
        inspect_checkpoint(d)
    save_file({n: tensors[n] for n in names[len(names) // 2:]}, str(d / "model-00002-of-00002.safetensors"))
    assert inspect_checkpoint(d).shape.family == "qwen3"  # every shard there: it loads

    d = broken(src, tmp_path / "empty")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"holds no \*.safetensors file"):
        inspect_checkpoint(d)


def test_a_failing_run_fails_before_training(checkpoints, tmp_path):
    d = broken(checkpoints["qwen3"], tmp_path / "bad")
    (d / "config.json").write_text("{not json")
    preset = from_mapping(config(d))
    steps = []
    with pytest.raises(CheckpointError, match=r"bad/config.json cannot be read as JSON"):
        train_and_evaluate(preset.model, preset.train, arith(4), [], None, base=preset.base, lora=preset.lora,
                           on_metrics=steps.append)
    assert steps == []
    assert dataclasses.replace(preset.train, max_len=None).max_len is None
