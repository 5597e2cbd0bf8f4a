"""Optimizer, the pure jitted train step, and deterministic batching.

``train_step = apply_grads ∘ compute_grads``. Loss is the mean over the
micro-batch's masked tokens: the summed cross-entropy over the global
count, so a step over a batch split across devices (``trainer.mesh``) is
the step over the whole batch, however the response tokens fall across the
shards. Accumulation (``optax.MultiSteps``) averages per-micro-batch means,
which equals one big batch exactly when the micro-batches hold equally many
masked tokens (always true for full sequences), and is the usual
approximation otherwise.

Step counting: ``TrainState.step`` counts micro-batches (train_step calls), so
it is also the index of the next batch to read; an optimizer update happens
every ``grad_accum_steps`` of them, and the schedule counts updates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainer.config import TrainConfig
from trainer.model import Apply, Params

Batch = dict[str, Any]  # {"tokens": int32[B, T], "loss_mask": int32[B, T]}


class TrainState(NamedTuple):
    """Everything a resumed run needs besides the data: a plain pytree."""

    step: jax.Array  # int32 scalar: micro-batches consumed = next batch index
    params: Params
    opt_state: optax.OptState


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to 0 at ``total_steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps,
        end_value=0.0,
    )


def _decay_mask(params: Params) -> Any:
    """Weight decay on matrices only: decaying norms' scales and biases only hurts."""
    return jax.tree.map(lambda a: a.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW (warmup + cosine), global-norm clipping of the accumulated gradient, MultiSteps."""
    inner = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(make_schedule(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                    mask=_decay_mask),
    )
    return optax.MultiSteps(inner, every_k_schedule=cfg.grad_accum_steps).gradient_transformation()


def masked_loss_sum(apply: Apply, params: Params, batch: Batch,
                    frozen: Params | None = None) -> tuple[jax.Array, jax.Array]:
    """``(summed cross-entropy over masked target tokens, number of masked tokens)``.

    Position t predicts token t+1; a target counts when its loss_mask is 1.
    ``frozen``: the weights that do not train (a base model's under LoRA).
    """
    tokens = batch["tokens"]
    logits = apply(params, tokens[:, :-1], frozen)
    targets = tokens[:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (ce * weights).sum(), weights.sum()


def masked_loss(apply: Apply, params: Params, batch: Batch,
                frozen: Params | None = None) -> tuple[jax.Array, jax.Array]:
    """``(mean cross-entropy over masked target tokens, number of masked tokens)``."""
    total, count = masked_loss_sum(apply, params, batch, frozen)
    return total / jnp.maximum(count, 1.0), count


@dataclass(frozen=True)
class TrainFns:
    """The jitted functions of one (model, train config) pair; build with ``make_train_fns``.

    - ``init(params) -> TrainState``
    - ``compute_grads(params, batch, frozen=None) -> (grads, {"loss", "tokens"})``
    - ``apply_grads(state, grads) -> (state, {"grad_norm", "learning_rate"})``
    - ``train_step(state, batch, frozen=None) -> (state, {"loss", "grad_norm", "learning_rate", "tokens"})``
    - ``eval_loss(params, batch, frozen=None) -> (mean loss, tokens)``

    ``frozen`` (the weights that do not train) is an argument, not a
    constant of the compiled step, and gets no gradient.
    """

    init: Any
    compute_grads: Any
    apply_grads: Any
    train_step: Any
    eval_loss: Any


@functools.lru_cache(maxsize=8)
def make_train_fns(apply: Apply, cfg: TrainConfig) -> TrainFns:
    """Cached per (apply, cfg): compiling the step costs seconds, a step milliseconds."""
    optimizer = make_optimizer(cfg)
    schedule = make_schedule(cfg)
    k = cfg.grad_accum_steps

    def init(params: Params) -> TrainState:
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    def compute_grads(params: Params, batch: Batch, frozen: Params | None = None):
        (loss, count), grads = jax.value_and_grad(
            lambda p: masked_loss(apply, p, batch, frozen), has_aux=True
        )(params)
        return grads, {"loss": loss, "tokens": count}

    def apply_grads(state: TrainState, grads: Params):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "grad_norm": optax.global_norm(grads),  # this micro-batch's, before clipping
            "learning_rate": schedule(state.step // k),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    def train_step(state: TrainState, batch: Batch, frozen: Params | None = None):
        grads, m = compute_grads(state.params, batch, frozen)
        state, m2 = apply_grads(state, grads)
        return state, {**m, **m2}

    return TrainFns(
        init=init,  # eager: cheaper than compiling it
        compute_grads=jax.jit(compute_grads),
        apply_grads=jax.jit(apply_grads),
        train_step=jax.jit(train_step),
        eval_loss=jax.jit(lambda p, b, frozen=None: masked_loss(apply, p, b, frozen)),
    )


# --- deterministic data order ------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``(n, seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, batch_index: int) -> np.ndarray:
    """Example indices of micro-batch ``batch_index`` of an endless stream of epochs.

    The stream is epoch 0's order, then epoch 1's, ...; batches run across epoch
    boundaries, so nothing is dropped and ``n < batch_size`` works. Batch i is
    a function of i alone, which is what makes a resumed run read the same data.
    """
    if n <= 0:
        raise ValueError("no training examples")
    positions = np.arange(batch_index * batch_size, (batch_index + 1) * batch_size)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // n):
        sel = positions // n == epoch
        out[sel] = epoch_order(n, seed, int(epoch))[positions[sel] % n]
    return out


def get_batch(arrays: dict[str, np.ndarray], indices: np.ndarray) -> Batch:
    return {name: jnp.asarray(a[indices]) for name, a in arrays.items()}
