"""The model a run trains, whichever it is: the byte-level model, or a pretrained one with or without LoRA.

``build_lm(preset)`` returns an ``LM``: pure functions over plain pytrees and
the tokenizer that goes with them, so the step, the checkpoints, the
gradient exchange and the evaluation are the same code for both kinds.

- ``params`` is what trains (and all a checkpoint holds): every weight of
  the byte model or of a fully fine-tuned base model, or only the LoRA
  adapters (qwix ``LoRAParam``) of a base model under LoRA.
- ``frozen`` is what does not train (the base weights under LoRA), passed
  to every jitted function as an argument, never baked in as a constant;
  None for the byte model.
- ``apply(params, tokens, frozen) -> logits[B, T, vocab]`` (float32).

A base model is a Tunix Flax NNX model built by ``trainer.hf`` from a
checked checkpoint directory; LoRA comes from ``qwix.apply_lora_to_model``
with ``LoraProvider`` rules on the configured projection names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from trainer.config import ConfigError, Preset
from trainer.model import Apply, Decoder, Params, build, decoder, param_count
from trainer.tokenizer import ByteTokenizer


@dataclass(frozen=True, eq=False)
class LM:
    """A trainable language model as pure functions; build with ``build_lm``."""

    apply: Apply  # apply(params, tokens[B, T], frozen) -> logits[B, T, vocab]
    params: Params  # the initial trainable parameters
    frozen: Params | None  # weights that do not train, or None
    tokenizer: Any  # ByteTokenizer | trainer.hf.HFTokenizer
    max_len: int  # tokens per training sequence
    decoder: Decoder | None  # the byte model's greedy KV-cached decoding (base models decode through ``sample``)
    info: dict[str, Any]  # what the model is: kind, path, parameter counts, lora
    lora_layout: dict[tuple[Any, ...], str | None] = dataclasses.field(default_factory=dict)
    """Under LoRA: each adapted module's path in ``params`` → its einsum string (None: a Linear kernel)."""
    sample: Any = None
    """Base models: batched KV-cached greedy decoding through Tunix's sampler (``trainer.sampling``); None: byte model."""

    def decoding_params(self, params: Params) -> Any:
        """What ``decoder`` and ``sample`` take: the trainable params, with the frozen ones when there are any."""
        return params if self.frozen is None else (params, self.frozen)


def build_lm(preset: Preset) -> LM:
    """The byte model from ``preset.model``, or ``preset.base`` loaded (with ``preset.lora``).

    Raises:
        CheckpointError: the base model directory is unusable (names the file and tensor).
        ConfigError: a LoRA target matches no module of the model.
    """
    if preset.base is None:
        cfg, train = preset.model, preset.train
        apply, params = build(cfg, train.seed, train.dtype)
        n = param_count(params)
        return LM(apply, params, None, ByteTokenizer(), cfg.max_len, decoder(cfg, train.dtype),
                  {"kind": "byte", "trainable_params": n, "total_params": n})
    return _load_base(preset)


def _load_base(preset: Preset) -> LM:
    import qwix
    from flax import nnx

    from trainer.hf import inspect_checkpoint, tunix_model
    from trainer.sampling import tunix_sampler

    ckpt = inspect_checkpoint(preset.base.path)
    tunix_cfg, create = tunix_model(ckpt.shape, preset.train.dtype)
    # Tunix's loader puts weights on jax.devices()[0] unless given a mesh: in a process joined to others by
    # jax.distributed that device may be another process's, so the weights load onto this process's own.
    model = create(str(ckpt.path), tunix_cfg, dtype=jnp.float32, mesh=_local_mesh())
    lora = preset.lora
    if lora is not None:
        modules = _lora_modules(ckpt.shape, lora.targets)
        provider = qwix.LoraProvider(module_path=".*/(" + "|".join(sorted(set(modules.values()))) + ")",
                                     rank=lora.rank, alpha=float(lora.alpha))
        one = jnp.ones((1, 1), jnp.int32)
        model = qwix.apply_lora_to_model(model, provider, one, one, None, jnp.ones((1, 1, 1), bool),
                                         rngs=nnx.Rngs(preset.train.seed))
        graphdef, trained, rest = nnx.split(model, nnx.LoRAParam, ...)
        found = {str(path[-2]) for path, _ in nnx.to_flat_state(trained)}
        missing = [t for t in lora.targets if modules[t] not in found]
        if missing:
            raise ConfigError(f"lora.targets {missing} match no module of the {ckpt.shape.family} model at "
                              f"{ckpt.path}; its projections are q_proj, k_proj, v_proj, o_proj, "
                              "gate_proj, up_proj, down_proj")
        layout = {}
        for path, _ in nnx.to_flat_state(trained):
            module = model
            for key in path[:-1]:
                module = module[key] if isinstance(key, int) else getattr(module, str(key))
            layout[tuple(path[:-1])] = getattr(module, "einsum_str", None)
    else:
        graphdef, trained, rest = nnx.split(model, nnx.Param, ...)
        layout = {}
    params, frozen = nnx.to_pure_dict(trained), nnx.to_pure_dict(rest)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (trained, rest))
    apply = _nnx_apply(graphdef, shapes, ckpt.shape)
    n_train, n_frozen = param_count(params), param_count(frozen)
    info = {"kind": "base", "family": ckpt.shape.family, "path": str(ckpt.path),
            "trainable_params": n_train, "total_params": n_train + n_frozen,
            "lora": None if lora is None else dataclasses.asdict(lora)}
    sample = tunix_sampler(graphdef, shapes, ckpt.shape, ckpt.tokenizer)
    return LM(apply, params, frozen, ckpt.tokenizer, preset.max_len, None, info, layout, sample)


def _local_mesh() -> jax.sharding.Mesh:
    """This process's first device under every axis name Tunix's models shard along (each of size 1)."""
    import numpy as np

    return jax.sharding.Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1, 1, 1), ("fsdp", "tp", "sp", "ep"))


def _lora_modules(shape: Any, targets: tuple[str, ...]) -> dict[str, str]:
    """Hugging Face projection names → the Tunix module names LoRA wraps (they differ for Gemma 3)."""
    from trainer.hf import GEMMA_MODULES

    if shape.family != "gemma3_text":
        return {t: t for t in targets}
    fused = shape.num_heads == shape.num_kv_heads
    return {t: "qkv_einsum" if fused and t in ("q_proj", "k_proj", "v_proj") else GEMMA_MODULES.get(t, t)
            for t in targets}


def _nnx_apply(graphdef: Any, shapes: Any, shape: Any) -> Apply:
    from flax import nnx

    from trainer.hf import rope_fix

    def apply(params: Params, tokens: jax.Array, frozen: Params | None = None) -> jax.Array:
        trained, rest = jax.tree.map(lambda a: a, shapes)
        nnx.replace_by_pure_dict(trained, params)
        nnx.replace_by_pure_dict(rest, frozen if frozen is not None else {})
        model = nnx.merge(graphdef, trained, rest)
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
        with rope_fix(shape):
            logits, _ = model(tokens, positions, None, causal)
        return logits.astype(jnp.float32)

    return apply


__all__ = ["LM", "build_lm"]
