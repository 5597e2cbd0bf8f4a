"""Eval scoring on hand-made strings; greedy decoding and the scorecard on a tiny model."""

import pytest

from trainer.config import TINY
from trainer.data import Example
from trainer.evaluate import evaluate, extract_answer, score
from trainer.model import build

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
