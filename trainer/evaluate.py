"""Evaluation: masked loss and perplexity, greedy decoding, exact match on ``<answer>``.

Decoding is the simple, obviously-correct kind: every step re-runs the model
over a fixed ``(N, max_len)`` buffer (one compilation for all steps; causal
attention makes the padding after each row's position irrelevant) and reads
the logits at each row's own position. O(new_tokens × forward), fine for
small models; a KV cache is the optimisation to add when it matters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.config import ModelConfig, TrainConfig
from trainer.data import Example, tokenize
from trainer.model import Apply, Params
from trainer.tokenizer import EOS, PAD, decode, encode_prompt
from trainer.train import make_train_fns

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The text inside the first complete ``<answer>…</answer>``, verbatim; None if there is none."""
    m = _ANSWER.search(text)
    return None if m is None else m.group(1)


def score(generations: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
    """Exact match of each generation's answer against ``final_answer`` (no normalisation).

    ``scored`` counts generations that contain a complete answer; ``exact_match``
    is a fraction of all items (a missing answer counts as wrong).
    """
    if len(generations) != len(examples):
        raise ValueError(f"{len(generations)} generations for {len(examples)} examples")
    by_source: dict[str, list[int]] = {}
    scored = hits = 0
    for text, ex in zip(generations, examples):
        answer = extract_answer(text)
        scored += answer is not None
        hit = int(answer is not None and answer == ex.final_answer)
        hits += hit
        by_source.setdefault(ex.source, []).append(hit)
    n = len(examples)
    return {
        "items": n,
        "scored": scored,
        "exact_match": hits / n if n else 0.0,
        "by_source": {
            s: {"items": len(h), "exact_match": sum(h) / len(h)} for s, h in sorted(by_source.items())
        },
    }


@jax.jit(static_argnums=0)
def _next_tokens(apply: Apply, params: Params, buf: jax.Array, pos: jax.Array) -> jax.Array:
    logits = apply(params, buf)
    return jnp.argmax(logits[jnp.arange(buf.shape[0]), pos - 1], axis=-1).astype(jnp.int32)


def generate(
    apply: Apply, params: Params, prompts: Sequence[str], max_len: int, max_new_tokens: int
) -> list[str]:
    """Greedy completions (text up to EOS) for ``prompts``, all decoded in one batch.

    Each prompt is cut from the left so that ``max_new_tokens`` fit (or at
    least half the buffer stays for the prompt).
    """
    if not prompts:
        return []
    new = min(max_new_tokens, max_len // 2)
    rows = [encode_prompt(p, max_len - new) for p in prompts]
    buf = np.full((len(rows), max_len), PAD, np.int32)
    for i, r in enumerate(rows):
        buf[i, : len(r)] = r
    start = np.array([len(r) for r in rows], np.int32)
    pos = start.copy()
    done = np.zeros(len(rows), bool)
    buf_j = jnp.asarray(buf)
    for _ in range(new):
        nxt = np.asarray(_next_tokens(apply, params, buf_j, jnp.asarray(pos)))
        write = ~done & (pos < max_len)
        idx = np.nonzero(write)[0]
        buf_j = buf_j.at[idx, pos[idx]].set(nxt[idx])
        done |= write & (nxt == EOS)
        pos = pos + write
        if (done | (pos >= max_len)).all():
            break
    out = np.asarray(buf_j)
    return [decode(out[i, start[i]: pos[i]]) for i in range(len(rows))]


def evaluate(
    apply: Apply,
    params: Params,
    examples: Sequence[Example],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
) -> dict[str, Any]:
    """Scorecard ``{items, scored, exact_match, loss, perplexity, by_source}``.

    Loss is the mean over every masked (completion) token of all examples.
    """
    if not examples:
        return {**score([], []), "loss": None, "perplexity": None}
    arrays = tokenize(examples, model_cfg.max_len)
    eval_loss = make_train_fns(apply, train_cfg).eval_loss
    total = count = 0.0
    bs = train_cfg.batch_size
    for i in range(0, len(examples), bs):
        batch = {k: jnp.asarray(v[i: i + bs]) for k, v in arrays.items()}
        loss, n = eval_loss(params, batch)
        total += float(loss) * float(n)
        count += float(n)
    loss = total / count if count else float("nan")
    texts = generate(apply, params, [e.prompt for e in examples], model_cfg.max_len,
                     train_cfg.eval_max_new_tokens)
    card = score(texts, examples)
    return {**card, "loss": loss, "perplexity": math.exp(min(loss, 700.0))}
