"""Train step: loss goes down, accumulation equals a bigger batch, data order is fixed."""

import dataclasses
from functools import cache

import jax
import numpy as np
import pytest

from devtools.generator import generate_events
from trainer.config import TINY
from trainer.data import examples_from_records, tokenize
from trainer.model import build
from trainer.train import (
    batch_indices,
    epoch_order,
    get_batch,
    make_schedule,
    make_train_fns,
)

pytestmark = pytest.mark.unit


@cache
def arrays(n=8, seed=7):
    records = [e.record for e in generate_events(n, seed=seed, broken_share=0.0)]
    return tokenize(examples_from_records(records), TINY.model.max_len)


def test_loss_decreases_over_30_steps():
    cfg = dataclasses.replace(TINY.train, total_steps=30)
    apply, params = build(TINY.model, cfg.seed)
    fns = make_train_fns(apply, cfg)
    state = fns.init(params)
    data = arrays()
    losses = []
    for i in range(30):
        state, m = fns.train_step(state, get_batch(data, batch_indices(8, 4, cfg.seed, i)))
        losses.append(float(m["loss"]))
    assert int(state.step) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert float(m["learning_rate"]) == pytest.approx(float(make_schedule(cfg)(29)))
    assert float(m["tokens"]) > 0 and np.isfinite(float(m["grad_norm"]))


def test_grad_accumulation_of_two_halves_equals_one_double_batch():
    data = arrays()
    big = get_batch(data, np.arange(4))
    halves = [get_batch(data, np.arange(0, 2)), get_batch(data, np.arange(2, 4))]
    # full 128-token completions: every half holds the same number of masked tokens
    assert float(halves[0]["loss_mask"].sum()) == float(halves[1]["loss_mask"].sum())
    apply, params = build(TINY.model, 0)
    one = make_train_fns(apply, dataclasses.replace(TINY.train, batch_size=4, grad_accum_steps=1))
    two = make_train_fns(apply, dataclasses.replace(TINY.train, batch_size=2, grad_accum_steps=2))
    s1, _ = one.train_step(one.init(params), big)
    s2 = two.init(params)
    s2, _ = two.train_step(s2, halves[0])
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(s2.params), jax.tree.leaves(params)))  # no update yet
    s2, _ = two.train_step(s2, halves[1])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_data_order_is_deterministic_and_covers_every_epoch():
    assert np.array_equal(epoch_order(10, 3, 1), epoch_order(10, 3, 1))
    assert not np.array_equal(epoch_order(10, 3, 0), epoch_order(10, 3, 1))
    stream = np.concatenate([batch_indices(5, 3, 1, i) for i in range(5)])  # 15 = 3 epochs
    for epoch in range(3):
        assert np.array_equal(stream[epoch * 5:(epoch + 1) * 5], epoch_order(5, 1, epoch))
