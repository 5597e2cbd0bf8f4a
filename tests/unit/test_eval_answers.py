"""Final answers: ``<answer>…</answer>`` verbatim, else GSM8K's ``#### N`` as a number; loss and perplexity per source."""

import math

import pytest

from trainer.config import TINY
from trainer.data import Example
from trainer.evaluate import (
    answer_matches,
    evaluate,
    extract_answer,
    normalise_number,
    score,
)
from trainer.model import build

pytestmark = pytest.mark.unit


def test_gsm8k_final_answer_lines():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert extract_answer(solution) == "72"
    assert extract_answer("#### 1,234\n") == "1,234"
    assert extract_answer("  ####   $18.00  \nmore text\n#### 5") == "$18.00"  # the first one
    assert extract_answer("a #### 3 in a sentence") is None  # only a line of its own
    assert extract_answer("####\n") is None
    assert extract_answer("<answer>7</answer>\n#### 8") == "7"  # <answer> wins


def test_normalise_number():
    assert normalise_number("1,234") == "1234"
    assert normalise_number("$18.00") == "18"
    assert normalise_number("72.") == "72"
    assert normalise_number("-0.50") == "-0.5"
    assert normalise_number("0.0") == "0"
    assert normalise_number(" 1e3 ") == "1000"
    assert normalise_number("seven") == "seven"
    assert normalise_number("nan") == "nan"


def test_answer_matches_and_score():
    assert answer_matches("<answer>72</answer>", "72") is True
    assert answer_matches("<answer> 72</answer>", "72") is False  # <answer> is verbatim, as before
    assert answer_matches("so\n#### 1,234", "1234") is True
    assert answer_matches("#### 18.00", "18") is True
    assert answer_matches("#### 19", "18") is False
    assert answer_matches("no answer", "18") is None
    examples = [Example("q", "c", "72", "gsm8k"), Example("q", "c", "5", "gsm8k"), Example("q", "c", "3", "arith")]
    card = score(["...\n#### 72", "#### five", "<answer>3</answer>"], examples)
    assert card["scored"] == 3 and card["exact_match"] == pytest.approx(2 / 3)
    assert card["by_source"] == {"arith": {"items": 1, "exact_match": 1.0}, "gsm8k": {"items": 2, "exact_match": 0.5}}


def test_loss_and_perplexity_per_source_add_up_to_the_overall_figures():
    apply, params = build(TINY.model, 0)
    examples = [Example("What is 1 + 2?", "<answer>3</answer>", "3", "a"),
                Example("What is 10 + 20?", "<answer>30</answer>", "30", "a"),
                Example("Tom has 3 apples " * 3, "He has 3.\n#### 3", "3", "gsm8k")]
    card = evaluate(apply, params, examples, TINY.model, TINY.train)
    by = card["by_source"]
    assert set(by) == {"a", "gsm8k"} and by["a"]["items"] == 2 and by["gsm8k"]["items"] == 1
    for s in by.values():
        assert s["loss"] > 0 and s["perplexity"] == pytest.approx(math.exp(s["loss"]))
    # the overall loss is the token-weighted mean of the sources' losses: between them
    lo, hi = sorted(s["loss"] for s in by.values())
    assert lo - 1e-6 <= card["loss"] <= hi + 1e-6
    # one source alone gives the same figure as its share of the whole eval
    alone = evaluate(apply, params, examples[2:], TINY.model, TINY.train)
    assert alone["loss"] == pytest.approx(by["gsm8k"]["loss"], rel=1e-5)
