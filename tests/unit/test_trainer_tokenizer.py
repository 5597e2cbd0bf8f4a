"""Byte tokenizer: the loss mask covers exactly the completion (+EOS); truncation keeps it so."""

import numpy as np
import pytest

from trainer.tokenizer import BOS, EOS, PAD, SEP, decode, encode_example, encode_prompt

pytestmark = pytest.mark.unit


def test_mask_covers_exactly_the_completion():
    tokens, mask = encode_example("Qué?", "<answer>4</answer>", 64)
    p, c = "Qué?".encode(), b"<answer>4</answer>"
    expected = [BOS, *p, SEP, *c, EOS]
    assert tokens.tolist() == expected + [PAD] * (64 - len(expected))
    assert mask.tolist() == [0] * (len(p) + 2) + [1] * (len(c) + 1) + [0] * (64 - len(expected))
    assert bytes(tokens[mask == 1][:-1].tolist()) == c
    assert decode(tokens[mask == 1]) == "<answer>4</answer>"


def test_prompt_is_cut_from_the_left():
    tokens, mask = encode_example("abcdefghij", "XY", 10)
    # BOS + the last 5 prompt bytes + SEP + X Y EOS fills all 10 positions
    assert tokens.tolist() == [BOS, *b"fghij", SEP, *b"XY", EOS]
    assert mask.sum() == 3


def test_long_completion_drops_prompt_and_is_cut_from_the_right():
    tokens, mask = encode_example("prompt", "0123456789", 8)
    assert tokens.tolist() == [BOS, SEP, *b"012345"]
    assert mask.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]


def test_prompt_encoding_and_decode():
    assert encode_prompt("hello", 5) == [BOS, *b"llo", SEP]
    assert decode([*"ü".encode(), EOS, 65]) == "ü"
    assert decode([0xC3]) == "\ufffd"
    assert np.array_equal(encode_example("", "", 3)[0], [BOS, SEP, EOS])
