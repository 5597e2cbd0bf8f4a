"""A small decoder-only byte-level transformer LM in Flax NNX, used functionally.

NNX is the API flax 0.12 documents first, so the model is an ``nnx.Module``.
The training code, though, wants plain pytrees (optax updates, orbax
checkpoints, gradient averaging across workers), so ``build`` splits the
module once and hands back ``apply(params, tokens)`` over a *pure dict* of
parameters: nothing stateful crosses a ``jax.jit`` boundary.

Pre-norm blocks (RMSNorm), causal multi-head self-attention, GELU MLP,
learned positions, output projection tied to the token embedding.
Parameters are float32; ``dtype`` is the compute dtype (logits and softmax
stay float32). ``decoder`` gives the same model as ``prefill``/``extend``
over a key-value cache, for generation that costs one position per token;
both paths share the blocks' code, only the attention mask differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.config import ModelConfig

Params = dict[str, Any]
Apply = Callable[..., jax.Array]
"""``apply(params, tokens[B, T], frozen=None) -> logits[B, T, vocab]``; ``frozen``: weights that do not train."""


class Cache(NamedTuple):
    """Per-block keys and values of a ``(B, T)`` buffer, each ``[B, T, heads, head_dim]``."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


class Decoder(NamedTuple):
    """Pure functions for incremental (KV-cached) decoding; build with ``decoder``.

    - ``prefill(params, tokens[B, T]) -> (logits[B, T, vocab], cache)``
    - ``extend(params, token[B], pos[B], cache) -> (logits[B, vocab], cache)``
    """

    prefill: Callable[[Params, jax.Array], tuple[jax.Array, Cache]]
    extend: Callable[[Params, jax.Array, jax.Array, Cache], tuple[jax.Array, Cache]]


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

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        return tuple(a.reshape(b, t, self.n_heads, d // self.n_heads) for a in (q, k, v))

    def _attend_and_mlp(self, x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
                        visible: jax.Array) -> jax.Array:
        """``visible[b|1, q, k]``: which keys each query may see."""
        b, t, d = x.shape
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(d // self.n_heads)
        scores = jnp.where(visible[:, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        att = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
        x = x + self.out(att)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Causal self-attention over ``x[B, T, d]``; also returns this block's keys and values."""
        t = x.shape[1]
        q, k, v = self._qkv(x)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
        return self._attend_and_mlp(x, q, k, v, causal), k, v

    def extend(self, x: jax.Array, pos: jax.Array, keys: jax.Array, values: jax.Array):
        """One new position per row: ``x[B, 1, d]`` at ``pos[B]``, attending to cached ``keys[B, T, …]``.

        Writes this position's key and value into the cache first, then lets
        the query see cache positions ``<= pos`` (anything later in the
        cache is stale and masked).
        """
        q, k, v = self._qkv(x)
        rows = jnp.arange(x.shape[0])
        keys = keys.at[rows, pos].set(k[:, 0])
        values = values.at[rows, pos].set(v[:, 0])
        visible = (jnp.arange(keys.shape[1])[None, :] <= pos[:, None])[:, None, :]
        return self._attend_and_mlp(x, q, keys, values, visible), keys, values


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.normal(0.02)
        self.dtype = dtype
        self.tok = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos = nnx.Embed(cfg.max_len, cfg.d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, dtype, rngs) for _ in range(cfg.n_layers)])
        self.norm = nnx.RMSNorm(cfg.d_model, dtype=dtype, rngs=rngs)

    def prefill(self, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """``(logits[B, T, vocab], cache)``: the forward pass, keeping every block's keys and values."""
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[-1]))[None]
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        return self.tok.attend(self.norm(x)).astype(jnp.float32), Cache(tuple(keys), tuple(values))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.prefill(tokens)[0]

    def extend(self, token: jax.Array, pos: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """``(logits[B, vocab], cache)`` for ``token[B]`` placed at ``pos[B]`` after what ``cache`` holds."""
        x = self.tok(token[:, None]) + self.pos(pos[:, None])
        keys, values = [], []
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            x, k, v = block.extend(x, pos, k, v)
            keys.append(k)
            values.append(v)
        return self.tok.attend(self.norm(x[:, 0])).astype(jnp.float32), Cache(tuple(keys), tuple(values))


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
def _split_for(cfg: ModelConfig, dtype: str) -> tuple[Any, Any]:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, jnp.dtype(dtype), nnx.Rngs(0))))
    return graphdef, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


@functools.lru_cache(maxsize=8)
def _apply_for(cfg: ModelConfig, dtype: str) -> Apply:
    graphdef, template = _split_for(cfg, dtype)

    def apply(params: Params, tokens: jax.Array, frozen: Params | None = None) -> jax.Array:
        del frozen  # every weight of the byte model trains
        st = jax.tree.map(lambda a: a, template)
        nnx.replace_by_pure_dict(st, params)
        return nnx.merge(graphdef, st)(tokens)

    return apply


@functools.lru_cache(maxsize=8)
def decoder(cfg: ModelConfig, dtype: str = "float32") -> Decoder:
    """The KV-cached counterpart of ``build``'s ``apply`` (same parameters, same logits).

    Decoding with it costs one position per new token instead of a whole
    forward pass over the buffer. The same object for the same ``(cfg, dtype)``.
    """
    graphdef, template = _split_for(cfg, dtype)

    def model(params: Params) -> Transformer:
        st = jax.tree.map(lambda a: a, template)
        nnx.replace_by_pure_dict(st, params)
        return nnx.merge(graphdef, st)

    return Decoder(
        prefill=lambda params, tokens: model(params).prefill(tokens),
        extend=lambda params, token, pos, cache: model(params).extend(token, pos, cache),
    )


def param_count(params: Params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
