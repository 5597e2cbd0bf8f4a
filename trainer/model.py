"""A small decoder-only byte-level transformer LM in Flax NNX, used functionally.

NNX is the API flax 0.12 documents first, so the model is an ``nnx.Module``.
The training code, though, wants plain pytrees (optax updates, orbax
checkpoints, gradient averaging across workers), so ``build`` splits the
module once and hands back ``apply(params, tokens)`` over a *pure dict* of
parameters: nothing stateful crosses a ``jax.jit`` boundary.

Pre-norm blocks (RMSNorm), causal multi-head self-attention, GELU MLP,
learned positions, output projection tied to the token embedding.
Parameters are float32; ``dtype`` is the compute dtype (logits and softmax
stay float32).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.config import ModelConfig

Params = dict[str, Any]
Apply = Callable[[Params, jax.Array], jax.Array]


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs) -> None:
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dtype = dtype
        self.norm1 = nnx.RMSNorm(d, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.RMSNorm(d, dtype=dtype, rngs=rngs)
        self.up = nnx.Linear(d, cfg.d_ff, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(cfg.d_ff, d, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, h, d // h) for a in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(d // h)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        att = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
        x = x + self.out(att)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.normal(0.02)
        self.dtype = dtype
        self.tok = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos = nnx.Embed(cfg.max_len, cfg.d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, dtype, rngs) for _ in range(cfg.n_layers)])
        self.norm = nnx.RMSNorm(cfg.d_model, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[-1]))[None]
        for block in self.blocks:
            x = block(x)
        return self.tok.attend(self.norm(x)).astype(jnp.float32)


def build(cfg: ModelConfig, seed: int, dtype: str = "float32") -> tuple[Apply, Params]:
    """``(apply, params)``: ``apply(params, tokens[B, T]) -> logits[B, T, vocab]`` (float32).

    ``params`` is a nested dict of float32 arrays, initialised from ``seed``.
    ``T`` may be anything up to ``cfg.max_len``. ``apply`` is the same object
    for the same ``(cfg, dtype)``, so jitted callers reuse their compilations.
    """
    model = Transformer(cfg, jnp.dtype(dtype), nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.split(model)[1])
    return _apply_for(cfg, dtype), params


@functools.lru_cache(maxsize=8)
def _apply_for(cfg: ModelConfig, dtype: str) -> Apply:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, jnp.dtype(dtype), nnx.Rngs(0))))
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)

    def apply(params: Params, tokens: jax.Array) -> jax.Array:
        st = jax.tree.map(lambda a: a, template)
        nnx.replace_by_pure_dict(st, params)
        return nnx.merge(graphdef, st)(tokens)

    return apply


def param_count(params: Params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
