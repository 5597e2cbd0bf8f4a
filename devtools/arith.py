"""Short column-arithmetic traces (kind ``arith``): small enough for a byte-level model."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from devtools.base import BASE_TIME, TRACE_VERSION

ARITH_SOURCE = "arith-synth"
ARITH_GENERATOR_TAG = "tracestream-arith/1"


def generate_arith_trace(rng: random.Random, index: int) -> dict:
    """One short column-arithmetic trace: ``What is 37 + 48?`` worked digit by digit.

    Two-digit operands, ``+`` or ``-`` (never a negative result), ASCII so that
    every symbol is one byte-level token. Two steps: the ones column, then
    the tens column with its carry or borrow written out (0 included, so
    every trace has the same shape); the answer is the tens result followed
    by the ones digit (a leading 0 dropped). Rendered for SFT a whole example
    is at most 160 bytes, so a short ``max_len`` keeps ``<answer>`` in view.
    """
    op = rng.choice("+-")
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if op == "-" and a < b:
        a, b = b, a
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        ones = a0 + b0
        carry = ones // 10
        tens = a1 + b1 + carry
        answer = a + b
        steps = [f"ones: {a0} + {b0} = {ones}", f"tens: {a1} + {b1} + {carry} = {tens}"]
    else:
        carry = int(a0 < b0)
        ones = a0 + 10 * carry - b0
        tens = a1 - b1 - carry
        answer = a - b
        steps = [f"ones: {a0 + 10 * carry} - {b0} = {ones}", f"tens: {a1} - {b1} - {carry} = {tens}"]
    return {
        "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "trace_version": TRACE_VERSION,
        "prompt": f"What is {a} {op} {b}?",
        "steps": [{"i": i, "type": "calculate", "content": c} for i, c in enumerate(steps)],
        "final_answer": str(answer),
        "meta": {"difficulty": "medium" if carry else "easy", "topic": "arithmetic",
                 "op": "add" if op == "+" else "subtract", "generator": ARITH_GENERATOR_TAG,
                 "lang": "en"},
        "source": ARITH_SOURCE,
        "created_at": BASE_TIME + timedelta(seconds=index),
        "score": None,
    }
