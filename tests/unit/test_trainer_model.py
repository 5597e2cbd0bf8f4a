"""The transformer: right shapes, causal, deterministic init, bf16 compute keeps f32 params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import TINY
from trainer.model import build, decoder

pytestmark = pytest.mark.unit


def test_shapes_causality_and_determinism():
    apply, params = build(TINY.model, seed=0)
    _, again = build(TINY.model, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
    x = jnp.zeros((2, 16), jnp.int32)
    f = jax.jit(apply)
    logits = f(params, x)
    assert logits.shape == (2, 16, TINY.model.vocab_size) and logits.dtype == jnp.float32
    changed = f(params, x.at[:, 5].set(7))
    assert jnp.array_equal(logits[:, :5], changed[:, :5])  # the past never sees the future
    assert not jnp.array_equal(logits[:, 5:], changed[:, 5:])


def test_bfloat16_compute_float32_params():
    apply, params = build(TINY.model, seed=0, dtype="bfloat16")
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    assert jax.jit(apply)(params, jnp.ones((1, 8), jnp.int32)).dtype == jnp.float32


def test_kv_cached_decoding_gives_the_full_forward_pass_logits():
    """prefill + extend, one position at a time and rows at different positions, matches apply."""
    cfg = TINY.model
    apply, params = build(cfg, seed=1)
    dec = decoder(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 40)), jnp.int32)
    full = jax.jit(apply)(params, tokens)
    logits, cache = jax.jit(dec.prefill)(params, tokens)
    np.testing.assert_allclose(logits, full, atol=1e-5)

    start = jnp.array([5, 12, 20])
    # Only what lies before each row's start is in the cache; the rest is stale junk.
    junk = jnp.where(jnp.arange(40)[None] < start[:, None], tokens, 7)
    _, cache = jax.jit(dec.prefill)(params, junk)
    extend = jax.jit(dec.extend)
    rows = jnp.arange(3)
    for k in range(15):
        pos = start + k
        out, cache = extend(params, tokens[rows, pos], pos, cache)
        np.testing.assert_allclose(out, full[rows, pos], atol=1e-4)
