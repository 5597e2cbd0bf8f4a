"""Byte-level tokenizer: UTF-8 bytes are tokens 0-255, then four specials.

Nothing to download or train, any text round-trips, and the vocabulary is
tiny, which suits a model trained from scratch. An SFT example is laid out

    BOS prompt-bytes SEP completion-bytes EOS PAD...

and the loss mask is 1 exactly on the completion bytes and the EOS (the
model learns to answer and to stop, never to reproduce the prompt).

Truncation, when the example is longer than ``max_len``: the prompt is cut
from the left first (its end, the actual question, is what the completion
depends on most). If the completion alone does not fit, the prompt is
dropped entirely and the completion is cut from the right, EOS included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BOS, EOS, SEP = 256, 257, 258, 259
SPECIALS = (PAD, BOS, EOS, SEP)


def encode_text(text: str) -> list[int]:
    """UTF-8 bytes as token ids."""
    return list(text.encode("utf-8"))


def decode(tokens) -> str:
    """Byte tokens back to text, stopping at the first EOS; other specials are skipped.

    Invalid UTF-8 (a model may emit half a character) becomes U+FFFD.
    """
    out = bytearray()
    for t in tokens:
        t = int(t)
        if t == EOS:
            break
        if t < 256:
            out.append(t)
    return out.decode("utf-8", errors="replace")


def encode_prompt(prompt: str, max_prompt_len: int) -> list[int]:
    """``BOS prompt SEP`` for generation, the prompt cut from the left to fit ``max_prompt_len``."""
    if max_prompt_len < 2:
        raise ValueError(f"max_prompt_len must be >= 2 (BOS and SEP), got {max_prompt_len}")
    body = encode_text(prompt)
    room = max_prompt_len - 2
    body = body[len(body) - room:] if len(body) > room else body
    return [BOS, *body, SEP]


def encode_example(prompt: str, completion: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, loss_mask)``, both int32 of shape ``(max_len,)``; see the module doc for layout.

    Raises:
        ValueError: ``max_len`` < 3 (no room for BOS, SEP and one completion token).
    """
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3, got {max_len}")
    p = encode_text(prompt)
    c = [*encode_text(completion), EOS]
    room_for_prompt = max_len - 2 - len(c)
    if room_for_prompt >= 0:
        p = p[max(0, len(p) - room_for_prompt):]
    else:
        p, c = [], c[: max_len - 2]
    seq = [BOS, *p, SEP, *c]
    tokens = np.full(max_len, PAD, dtype=np.int32)
    mask = np.zeros(max_len, dtype=np.int32)
    tokens[: len(seq)] = seq
    mask[len(seq) - len(c): len(seq)] = 1
    return tokens, mask


@dataclass(frozen=True)
class Encoded:
    """One tokenized SFT example (any tokenizer)."""

    tokens: np.ndarray  # int32[max_len], padded with the tokenizer's pad id
    loss_mask: np.ndarray  # int32[max_len], 1 on completion tokens
    truncated: bool  # whether the truncation rule cut anything


class ByteTokenizer:
    """The byte-level tokenizer behind the interface ``trainer.hf.HFTokenizer`` also has."""

    pad_id = PAD
    eos_id = EOS
    stop_ids = (EOS,)
    vocab_size = 256 + len(SPECIALS)

    def encode_example(self, prompt: str, completion: str, max_len: int) -> Encoded:
        tokens, mask = encode_example(prompt, completion, max_len)
        cut = len(encode_text(prompt)) + len(encode_text(completion)) + 3 > max_len
        return Encoded(tokens, mask, cut)

    @staticmethod
    def encode_prompt(prompt: str, max_prompt_len: int) -> list[int]:
        return encode_prompt(prompt, max_prompt_len)

    @staticmethod
    def decode(tokens) -> str:
        return decode(tokens)
