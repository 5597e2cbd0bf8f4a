"""Eval scoring on hand-made strings; greedy decoding and the scorecard on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import TINY
from trainer.data import Example
from trainer.evaluate import (
    evaluate,
    extract_answer,
    generate,
    majority_baseline,
    score,
)
from trainer.model import build
from trainer.tokenizer import EOS, PAD, decode, encode_prompt

pytestmark = pytest.mark.unit


def ex(answer, source="s1"):
    return Example("q", f"<answer>{answer}</answer>", answer, source)


def test_extract_answer():
    assert extract_answer('<step i="0" type="plan">x</step>\n<answer>42</answer>') == "42"
    assert extract_answer("<answer>a\nb</answer> <answer>c</answer>") == "a\nb"
    assert extract_answer("<answer>42") is None
    assert extract_answer("") is None


def test_score_exact_match_by_source():
    gens = ["<answer>42</answer>", "<answer> 7</answer>", "no answer", "<answer>3.5</answer>"]
    card = score(gens, [ex("42"), ex("7"), ex("1", "s2"), ex("3.5", "s2")])
    assert card == {
        "items": 4,
        "scored": 3,
        "exact_match": 0.5,
        "by_source": {"s1": {"items": 2, "exact_match": 0.5}, "s2": {"items": 2, "exact_match": 0.5}},
    }
    with pytest.raises(ValueError):
        score(["x"], [])


def test_evaluate_untrained_model_gives_a_full_scorecard():
    apply, params = build(TINY.model, 0)
    examples = [ex("42"), Example("a longer prompt " * 20, "<answer>1</answer>", "1", "s2")]
    card = evaluate(apply, params, examples, TINY.model, TINY.train)
    assert card["items"] == 2 and card["exact_match"] == 0.0
    assert card["loss"] > 4.0 and card["perplexity"] > 50  # ~ln(260) before training
    assert set(card["by_source"]) == {"s1", "s2"}
    assert card["baseline"] == {"kind": "majority_answer", "answer": "1", "exact_match": 0.5, "from": "eval"}
    with_train = evaluate(apply, params, examples, TINY.model, TINY.train, train_examples=[ex("42")] * 3)
    assert with_train["baseline"]["answer"] == "42" and with_train["baseline"]["from"] == "train"


def test_majority_baseline():
    evals = [ex("5"), ex("5"), ex("7"), ex("9")]
    assert majority_baseline(evals) == {"kind": "majority_answer", "answer": "5", "exact_match": 0.5,
                                        "from": "eval"}
    train = [ex("9"), ex("9"), ex("5")]
    assert majority_baseline(evals, train)["answer"] == "9"
    assert majority_baseline(evals, train)["exact_match"] == 0.25
    assert majority_baseline(evals, [ex("3")])["exact_match"] == 0.0  # an answer eval never has
    assert majority_baseline([ex("b"), ex("a")])["answer"] == "a"  # a tie goes to the first in order
    assert majority_baseline([])["exact_match"] == 0.0


def _greedy_without_cache(apply, params, prompts, max_len, max_new):
    """The obvious decoder: a full forward pass per new token, one prompt at a time."""
    f = jax.jit(apply)
    out = []
    for p in prompts:
        seq = encode_prompt(p, max_len - min(max_new, max_len // 2))
        start = len(seq)
        while len(seq) < max_len and len(seq) - start < max_new:
            buf = np.full((1, max_len), PAD, np.int32)
            buf[0, : len(seq)] = seq
            nxt = int(jnp.argmax(f(params, jnp.asarray(buf))[0, len(seq) - 1]))
            seq.append(nxt)
            if nxt == EOS:
                break
        out.append(decode(seq[start:]))
    return out


def test_cached_batched_greedy_decoding_matches_the_obvious_decoder():
    apply, params = build(TINY.model, 3)
    prompts = ["What is 12 + 30?", "x", "a much longer prompt than the others " * 3, "7 − 2", "ü?"]
    expected = _greedy_without_cache(apply, params, prompts, TINY.model.max_len, 90)
    assert any(len(t) > 20 for t in expected)  # rows ran past half the buffer, not just to EOS at once
    got = generate(params, prompts, TINY.model, 90, batch_size=2)  # 3 batches, the last one padded
    assert got == expected
    assert generate(params, prompts, TINY.model, 90) == expected
    assert generate(params, [], TINY.model, 90) == []


def test_a_model_that_learned_two_answers_beats_the_baseline_and_stops_at_eos():
    """Trained on two prompts with different answers, greedy decoding reproduces each, EOS included."""
    from trainer.config import TrainConfig
    from trainer.data import tokenize
    from trainer.train import make_train_fns

    examples = [Example("first?", "<answer>17</answer>", "17", "a"),
                Example("second?", "<answer>4</answer>", "4", "b")]
    cfg = TrainConfig(batch_size=2, learning_rate=1e-2, warmup_steps=5, total_steps=120,
                      eval_max_new_tokens=40)
    apply, params = build(TINY.model, 0)
    fns = make_train_fns(apply, cfg)
    state = fns.init(params)
    batch = {k: jnp.asarray(v) for k, v in tokenize(examples, TINY.model.max_len).items()}
    for _ in range(cfg.total_steps):
        state, _ = fns.train_step(state, batch)
    texts = generate(state.params, [e.prompt for e in examples], TINY.model, cfg.eval_max_new_tokens)
    assert texts == [e.completion for e in examples]  # nothing after EOS, nothing missing before it
    card = evaluate(apply, state.params, examples, TINY.model, cfg, train_examples=examples[:1])
    assert card["exact_match"] == 1.0 and card["baseline"]["exact_match"] == 0.5
