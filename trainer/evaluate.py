"""Evaluation: masked loss and perplexity (overall and per source), greedy decoding, exact match, a baseline.

The final answer of a generation is the text of its first complete
``<answer>…</answer>``, compared verbatim with the example's
``final_answer``; without one, GSM8K's ``#### N`` line (the first), compared
as a number: commas, a leading ``$`` and a trailing ``.`` dropped, ``72.0``
equal to ``72``.

Decoding runs whole on the device: one jitted prefill of a fixed
``(batch, max_len)`` buffer, then a ``while_loop`` that extends every row by
one token per step through the model's KV cache (``trainer.model.decoder``)
and stops when all rows have emitted EOS. Each new token costs one position,
not a forward pass over the buffer, and one compilation serves every batch.
A base model decodes the same way through Tunix's sampler
(``trainer.sampling``): left-padded batches, one prefill of the KV cache,
then one cached position per step.

An exact match means little alone: ``baseline`` says what always answering
the commonest answer scores on the same items.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.config import ModelConfig, TrainConfig
from trainer.data import Example, tokenize_counted
from trainer.lm import LM
from trainer.model import Apply, Decoder, Params, decoder
from trainer.tokenizer import EOS, ByteTokenizer
from trainer.train import make_train_fns

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_GSM8K = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*?)[ \t]*$", re.MULTILINE)


def extract_answer(text: str) -> str | None:
    """The text inside the first complete ``<answer>…</answer>``, verbatim; else GSM8K's first ``#### N``; else None."""
    m = _ANSWER.search(text)
    if m is not None:
        return m.group(1)
    m = _GSM8K.search(text)
    return None if m is None else m.group(1)


def normalise_number(text: str) -> str:
    """A GSM8K-style answer as a canonical number (``"1,234.50"`` → ``"1234.5"``); other text stripped only."""
    t = text.strip().replace(",", "").removeprefix("$").rstrip(".").strip()
    try:
        d = Decimal(t)
    except InvalidOperation:
        return text.strip()
    if not d.is_finite():
        return text.strip()
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def answer_matches(text: str, final_answer: str) -> bool | None:
    """Whether ``text``'s final answer is ``final_answer`` (None: it has none). See the module doc."""
    m = _ANSWER.search(text)
    if m is not None:
        return m.group(1) == final_answer
    m = _GSM8K.search(text)
    if m is None:
        return None
    return normalise_number(m.group(1)) == normalise_number(final_answer)


def score(generations: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
    """Exact match of each generation's answer against ``final_answer`` (``answer_matches``).

    ``scored`` counts generations that contain a complete answer; ``exact_match``
    is a fraction of all items (a missing answer counts as wrong).
    """
    if len(generations) != len(examples):
        raise ValueError(f"{len(generations)} generations for {len(examples)} examples")
    by_source: dict[str, list[int]] = {}
    scored = hits = 0
    for text, ex in zip(generations, examples):
        match = answer_matches(text, ex.final_answer)
        scored += match is not None
        hit = int(bool(match))
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


def majority_baseline(
    examples: Sequence[Example], train_examples: Sequence[Example] | None = None
) -> dict[str, Any]:
    """The exact match of always giving one answer, the commonest: what ignoring the prompt scores.

    With ``train_examples`` the answer is the commonest ``final_answer`` of
    the train split (what a model that learned only the answer distribution
    would say). Without them it is the commonest answer of ``examples``
    themselves: the best any constant answer can score on them, a stricter
    bar. Ties go to the answer that sorts first, so the figure is reproducible.
    """
    pool = examples if train_examples is None else train_examples
    counts = Counter(e.final_answer for e in pool)
    if not counts or not examples:
        return {"kind": "majority_answer", "answer": None, "exact_match": 0.0,
                "from": "eval" if train_examples is None else "train"}
    top = max(counts.values())
    answer = min(a for a, c in counts.items() if c == top)
    hits = sum(e.final_answer == answer for e in examples)
    return {"kind": "majority_answer", "answer": answer, "exact_match": hits / len(examples),
            "from": "eval" if train_examples is None else "train"}


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _greedy(dec: Decoder, params: Params, buf: jax.Array, start: jax.Array, max_new: int,
            stops: tuple[int, ...] = (EOS,)):
    """``(buf, end)``: rows of ``buf`` extended greedily from ``start`` until EOS, ``max_new`` or the end.

    One prefill of the whole buffer, then one cached position per step in a
    ``while_loop`` that stops as soon as every row is done.
    """
    n, t = buf.shape
    rows = jnp.arange(n)
    logits, cache = dec.prefill(params, buf)
    first = jnp.argmax(logits[rows, start - 1], axis=-1).astype(jnp.int32)

    def more(carry):
        i, _, pos, _, done, _ = carry
        return (i < max_new) & ~jnp.all(done | (pos >= t))

    def step(carry):
        i, buf, pos, tok, done, cache = carry
        write = ~done & (pos < t)
        at = jnp.minimum(pos, t - 1)
        buf = buf.at[rows, at].set(jnp.where(write, tok, buf[rows, at]))
        done = done | (write & jnp.isin(tok, jnp.asarray(stops, jnp.int32)))
        logits, cache = dec.extend(params, tok, at, cache)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return i + 1, buf, pos + write, nxt, done, cache

    init = (jnp.int32(0), buf, start, first, jnp.zeros(n, bool), cache)
    _, buf, pos, _, _, _ = jax.lax.while_loop(more, step, init)
    return buf, pos


def generate(
    params: Params,
    prompts: Sequence[str],
    model_cfg: ModelConfig,
    max_new_tokens: int,
    *,
    dtype: str = "float32",
    batch_size: int = 64,
    lm: LM | None = None,
) -> list[str]:
    """Greedy completions (text up to EOS) for ``prompts``, decoded with a KV cache in fixed-size batches.

    A prompt is cut from the left only as far as needed to leave
    ``min(max_new_tokens, max_len // 2)`` positions for the completion; a
    shorter prompt leaves more, and decoding goes on to ``max_new_tokens``
    or the end of the ``max_len`` buffer. Every batch has ``batch_size``
    rows (the last is padded), so one compilation serves a whole eval.
    With ``lm`` (``trainer.lm``) its decoder, tokenizer and ``max_len``
    replace ``model_cfg``'s byte model; a base model decodes through
    Tunix's sampler (``trainer.sampling``: left-padded batches, KV cache,
    ``max_new_tokens`` past the prompt whatever ``max_len`` is).
    """
    if not prompts:
        return []
    if lm is None:
        max_len, dec, tok, dparams = model_cfg.max_len, decoder(model_cfg, dtype), ByteTokenizer(), params
    else:
        max_len, dec, tok, dparams = lm.max_len, lm.decoder, lm.tokenizer, lm.decoding_params(params)
    reserve = min(max_new_tokens, max_len // 2)
    rows = [tok.encode_prompt(p, max_len - reserve) for p in prompts]
    if lm is not None and lm.sample is not None:  # a base model: Tunix's sampler, batched with a KV cache
        return [tok.decode(ids) for ids in lm.sample(dparams, rows, max_new_tokens, batch_size)]
    size = min(batch_size, len(rows))
    texts: list[str] = []
    for lo in range(0, len(rows), size):
        chunk = rows[lo: lo + size]
        chunk = chunk + [chunk[0]] * (size - len(chunk))  # pad rows: decoded, then dropped
        buf = np.full((size, max_len), tok.pad_id, np.int32)
        for i, r in enumerate(chunk):
            buf[i, : len(r)] = r
        start = np.array([len(r) for r in chunk], np.int32)
        out, end = _greedy(dec, dparams, jnp.asarray(buf), jnp.asarray(start), max_new_tokens,
                           tuple(tok.stop_ids))
        out, end = np.asarray(out), np.asarray(end)
        texts += [tok.decode(out[i, start[i]: end[i]]) for i in range(min(size, len(rows) - lo))]
    return texts


def evaluate(
    apply: Apply,
    params: Params,
    examples: Sequence[Example],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_examples: Sequence[Example] | None = None,
    *,
    lm: LM | None = None,
) -> dict[str, Any]:
    """Scorecard ``{items, scored, exact_match, baseline, loss, perplexity, by_source, truncated}``.

    Loss is the mean over every masked (completion) token of all examples;
    ``by_source[s]`` has ``items``, ``exact_match``, ``loss`` and
    ``perplexity`` over source ``s``'s examples.
    ``baseline`` is ``majority_baseline(examples, train_examples)``: the
    exact match to beat before a score means the model read the prompt.
    ``truncated`` counts the eval examples longer than ``max_len`` (cut for
    the loss). ``lm`` (``trainer.lm``): a base model's tokenizer, frozen
    weights and decoder instead of the byte model's.
    """
    baseline = majority_baseline(examples, train_examples)
    if not examples:
        return {**score([], []), "baseline": baseline, "loss": None, "perplexity": None, "truncated": 0}
    max_len = model_cfg.max_len if lm is None else lm.max_len
    arrays, truncated = tokenize_counted(examples, max_len, None if lm is None else lm.tokenizer)
    frozen = None if lm is None else lm.frozen
    eval_loss = make_train_fns(apply, train_cfg).eval_loss
    bs = train_cfg.batch_size
    sums: dict[str, list[float]] = {}  # source -> [loss sum, tokens]
    rows_of: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        rows_of.setdefault(e.source, []).append(i)
    for source, rows in sorted(rows_of.items()):
        acc = sums.setdefault(source, [0.0, 0.0])
        for lo in range(0, len(rows), bs):
            idx = np.asarray(rows[lo: lo + bs])
            # every batch has batch_size rows (padding rows have no loss tokens): one compilation per eval
            pad = bs - len(idx)
            batch = {k: jnp.asarray(np.concatenate([v[idx], np.zeros((pad, *v.shape[1:]), v.dtype)]))
                     for k, v in arrays.items()}
            loss, n = eval_loss(params, batch, frozen)
            if float(n) > 0:
                acc[0] += float(loss) * float(n)
                acc[1] += float(n)
    total, count = sum(a[0] for a in sums.values()), sum(a[1] for a in sums.values())
    loss = total / count if count else float("nan")
    texts = generate(params, [e.prompt for e in examples], model_cfg, train_cfg.eval_max_new_tokens,
                     dtype=train_cfg.dtype, lm=lm)
    card = score(texts, examples)
    for source, (t, n) in sums.items():
        s_loss = t / n if n else float("nan")
        card["by_source"][source].update(loss=s_loss, perplexity=_perplexity(s_loss))
    return {**card, "baseline": baseline, "loss": loss, "perplexity": _perplexity(loss), "truncated": truncated}


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0)) if math.isfinite(loss) else float("nan")
