"""What a run leaves to serve: a LoRA run's adapter (PEFT layout) and merged model, a full fine-tune's model.

``export_lora(lm, params, directory)`` writes, under ``directory``:

- ``adapter/``: ``adapter_model.safetensors`` with the LoRA tensors only,
  under the names Hugging Face PEFT gives them
  (``base_model.model.<module>.lora_A.weight`` ``[rank, in]`` and
  ``….lora_B.weight`` ``[out, rank]``, so ``W + alpha / rank * B @ A`` is
  the adapted weight), and ``adapter_config.json`` (rank, alpha, target
  modules, the base model's path and the sha256 of its directory);
- ``merged/``: the base checkpoint with every adapted weight replaced by
  ``W + alpha / rank * B @ A`` (computed in float32, stored in the base
  tensor's own dtype), in the base checkpoint's own files and shards, with
  its ``config.json``, tokenizer files and index copied, so
  ``trainer.hf.inspect_checkpoint`` and the trainer's loader (or
  ``transformers``) read it as they read the base model.

qwix stores an adapter of an ``Einsum`` weight as ``A`` over the weight's
contracted dimensions and ``B`` over the others (Tunix layout), and of a
``Linear`` kernel as ``A [in, r]``, ``B [r, out]``; flattening those
dimensions in their order gives exactly the Hugging Face ``[out, in]``
layout the loader transposed and reshaped (checked by reloading the merged
directory: same logits as the adapted model). Gemma 3's fused ``kv_einsum``
/ ``qkv_einsum`` adapters share one ``A``: each of k, v (and q) gets that
``A`` and its slice of ``B``, which merges to the same weights. Tunix 0.1.7
has a merge-and-save for Qwen3 and Gemma 3 only
(``save_lora_merged_model_as_safetensors``, which reads a single
``model.safetensors``); this one covers every family the trainer loads and
sharded checkpoints.

A full fine-tune (no LoRA) leaves ``model/``: its trained weights under
the Hugging Face names (``hf_tensors``: Tunix's loader mapping reversed),
in the base checkpoint's files, dtypes and layout, with its other files.

Each directory is written beside its final place and renamed over it, so a
path announced in a run event is complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.checkpoint import sha256_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

_HF_MODULE = {
    "q_proj": ("self_attn", ("q_proj",)), "k_proj": ("self_attn", ("k_proj",)),
    "v_proj": ("self_attn", ("v_proj",)), "o_proj": ("self_attn", ("o_proj",)),
    "gate_proj": ("mlp", ("gate_proj",)), "up_proj": ("mlp", ("up_proj",)), "down_proj": ("mlp", ("down_proj",)),
    # Gemma 3 (Tunix names)
    "q_einsum": ("self_attn", ("q_proj",)), "kv_einsum": ("self_attn", ("k_proj", "v_proj")),
    "qkv_einsum": ("self_attn", ("q_proj", "k_proj", "v_proj")), "attn_vec_einsum": ("self_attn", ("o_proj",)),
}
"""Tunix module name → (Hugging Face block, the projections it holds, in the order a fused weight stacks them)."""


@dataclass(frozen=True)
class Output:
    """One exported directory: ``kind`` is "adapter" or "merged"."""

    kind: str
    path: Path
    sha256: str  # trainer.checkpoint.sha256_dir of the directory

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}


def _get(tree: Mapping[Any, Any], path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key] if key in tree else tree[str(key)]
    return tree


def _weight_names(params: Mapping[Any, Any], module: tuple[Any, ...]) -> str:
    """The adapted weight's attribute (``w`` or ``kernel``) from its ``<name>_lora_a`` leaf."""
    names = [str(k)[: -len("_lora_a")] for k in _get(params, module) if str(k).endswith("_lora_a")]
    if len(names) != 1:
        raise ValueError(f"module {module} holds {len(names)} LoRA pairs, expected one")
    return names[0]


def lora_tensors(lm: Any, params: Mapping[Any, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Hugging Face module name (``model.layers.0.self_attn.q_proj``) → ``(A [r, in], B [out, r])``, float32."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for module, einsum in sorted(lm.lora_layout.items(), key=lambda kv: tuple(map(str, kv[0]))):
        name = _weight_names(params, module)
        node = _get(params, module)
        a = np.asarray(node[name + "_lora_a"], np.float32)
        b = np.asarray(node[name + "_lora_b"], np.float32)
        r = a.shape[-1]
        if einsum is None:  # Linear kernel [in, out]: A [in, r], B [r, out]
            b_parts = [b.reshape(r, -1)]
        else:  # A over the contracted dims of the weight, B over the rest, each in the weight's order
            lhs, rhs = einsum.split("->")[0].split(",")
            kept = [c for c in rhs if c not in lhs]
            if len(_HF_MODULE.get(str(module[-1]), ("", ("",)))[1]) > 1:  # fused: split B's first dim
                b_parts = [b[:, i].reshape(r, -1) for i in range(b.shape[1])]
            else:
                assert b.ndim == 1 + len(kept), (module, einsum, b.shape)
                b_parts = [b.reshape(r, -1)]
        a_hf = a.reshape(-1, r).T
        layer = next((k for k in module if isinstance(k, int) or str(k).isdigit()), None)
        block, projections = _HF_MODULE[str(module[-1])]
        if layer is None or len(projections) != len(b_parts):
            raise ValueError(f"cannot name the Hugging Face module of LoRA module {module}")
        for projection, b_part in zip(projections, b_parts):
            out[f"model.layers.{int(layer)}.{block}.{projection}"] = (a_hf, np.ascontiguousarray(b_part.T))
    return out


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _fresh(path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_like_base(base: Path, out: Path, value_of: Callable[[str, Any], Any]) -> set[str]:
    """``out`` as a copy of checkpoint ``base``, each tensor replaced by ``value_of(name, base tensor)``.

    The same safetensors files (shards) and metadata, every other file
    copied; each tensor keeps its dtype. Returns the tensor names written.
    """
    from safetensors import safe_open
    from safetensors.flax import save_file

    from trainer.hf import _tensor_files

    tmp = _fresh(out)
    names: set[str] = set()
    for file in _tensor_files(base):
        tensors: dict[str, Any] = {}
        with safe_open(str(file), framework="flax") as f:
            metadata = f.metadata()
            for key in f.keys():  # noqa: SIM118 (a safetensors file, not a dict)
                value = f.get_tensor(key)
                tensors[key] = value_of(key, value).astype(value.dtype)
                names.add(key)
        save_file(tensors, str(tmp / file.name), metadata=metadata)
    for item in sorted(base.iterdir()):
        if item.is_file() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, tmp / item.name)
    _replace_dir(tmp, out)
    return names


def export_lora(lm: Any, params: Mapping[Any, Any], directory: Path | str) -> list[Output]:
    """Write ``directory/adapter`` and ``directory/merged`` for a LoRA run's final ``params``; see the module doc."""
    import jax.numpy as jnp
    from safetensors.flax import save_file

    lora = lm.info["lora"]
    scale = float(lora["alpha"]) / float(lora["rank"])
    base = Path(lm.info["path"])
    directory = Path(directory).absolute()
    pairs = lora_tensors(lm, params)

    def merged(key: str, value: Any) -> Any:
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module not in pairs:
            return value
        a, b = pairs[module]
        return value.astype(jnp.float32) + scale * jnp.asarray(b @ a)

    written = _write_like_base(base, directory / "merged", merged)
    todo = sorted(m for m in pairs if m + ".weight" not in written)
    if todo:
        raise ValueError(f"{base}: the safetensors files hold no weight for the adapted modules {todo}")

    adapter_dir = directory / "adapter"
    tmp = _fresh(adapter_dir)
    tensors = {}
    for module, (a, b) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = jnp.asarray(a)
        tensors[f"base_model.model.{module}.lora_B.weight"] = jnp.asarray(b)
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(lora["rank"]), "lora_alpha": float(lora["alpha"]),
        "target_modules": sorted({m.rsplit(".", 1)[1] for m in pairs}), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
        "base_model_name_or_path": str(base), "base_model_sha256": sha256_dir(base),
        "base_model_family": lm.info["family"],
    }
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _replace_dir(tmp, adapter_dir)
    merged_dir = directory / "merged"
    return [Output("adapter", adapter_dir, sha256_dir(adapter_dir)), Output("merged", merged_dir, sha256_dir(merged_dir))]


def _deep_merge(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> dict[Any, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if k in out and isinstance(v, Mapping) else v
    return out


def hf_tensors(shape: Any, tree: Mapping[Any, Any]) -> dict[str, np.ndarray]:
    """A loaded model's weights (Tunix tree) under their Hugging Face names and shapes: the loader's mapping reversed.

    Tunix's loader transposes (``permute``) then reshapes each tensor; this
    reshapes to the permuted Hugging Face shape, then transposes back.
    Gemma 3's fused ``qkv_einsum`` / ``kv_einsum`` are split into q, k, v.
    """
    import importlib
    import re

    from trainer.hf import expected_tensors, tunix_model

    cfg, _ = tunix_model(shape, "float32")
    module = {"qwen3": "qwen3.params", "qwen2": "qwen2.params", "llama": "llama3.params",
              "gemma3_text": "gemma3.params_safetensors"}[shape.family]
    mapping = importlib.import_module(f"tunix.models.{module}")._get_key_and_transform_mapping(cfg)

    def leaf(key: str) -> np.ndarray:
        return np.asarray(_get(tree, tuple(int(k) if k.isdigit() else k for k in key.split("."))), np.float32)

    out: dict[str, np.ndarray] = {}
    fused = shape.num_heads == shape.num_kv_heads
    for name, hf_shape in expected_tensors(shape).items():
        gemma_qkv = re.fullmatch(r"model\.layers\.([0-9]+)\.self_attn\.([qkv])_proj\.weight", name)
        if shape.family == "gemma3_text" and gemma_qkv:
            layer, which = gemma_qkv.groups()
            if fused:
                w = leaf(f"layers.{layer}.attn.qkv_einsum.w")["qkv".index(which)]
            elif which == "q":
                w = leaf(f"layers.{layer}.attn.q_einsum.w")
            else:
                w = leaf(f"layers.{layer}.attn.kv_einsum.w")["kv".index(which)]
            out[name] = w.transpose(0, 2, 1).reshape(hf_shape)  # [N, D, H] -> [N * H, D]
            continue
        subs = [(re.sub(pat, repl, name), rule) for pat, (repl, rule) in mapping.items() if re.match(pat, name)]
        if len(subs) != 1:
            raise ValueError(f"tensor {name}: {len(subs)} rules of Tunix's {shape.family} loader match it")
        key, rule = subs[0]
        value = leaf(key)
        permute = rule[0] if rule else None
        if permute:
            value = value.reshape([hf_shape[i] for i in permute]).transpose(np.argsort(permute))
        out[name] = value.reshape(hf_shape)
    return out


def export_model(lm: Any, params: Mapping[Any, Any], directory: Path | str) -> list[Output]:
    """A fully fine-tuned base model's weights as ``directory/model``, a Hugging Face directory like its base."""
    import jax.numpy as jnp

    from trainer.hf import inspect_checkpoint

    base = Path(lm.info["path"])
    shape = inspect_checkpoint(base).shape
    state = hf_tensors(shape, _deep_merge(lm.frozen or {}, params))
    out = Path(directory).absolute() / "model"
    _write_like_base(base, out, lambda key, value: jnp.asarray(state[key]) if key in state else value)
    return [Output("model", out, sha256_dir(out))]


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "Output", "export_lora", "export_model", "hf_tensors", "lora_tensors"]
