"""The transformer: right shapes, causal, deterministic init, bf16 compute keeps f32 params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import TINY
from trainer.model import build

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
