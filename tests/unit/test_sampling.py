"""Tunix's sampler (batched, KV-cached) decodes a loaded base model as a full forward pass per token does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devtools.hf_checkpoints import write_checkpoint
from trainer.config import from_mapping
from trainer.lm import build_lm

pytestmark = pytest.mark.unit

PROMPTS = ["What is 1 + 2?", "What is 37 + 48? And then 12 + 5, and 9 + 9?", "Hi", "What is 5 + 5?", "7 * 3 = ?"]


def reference_greedy(lm, rows: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy ids by a full forward pass per token (no cache, no padding on the left)."""
    width = max(map(len, rows)) + max_new
    apply = jax.jit(lambda ids: lm.apply(lm.params, ids, lm.frozen))
    out = []
    for row in rows:
        ids, new = list(row), []
        for _ in range(max_new):
            buf = np.full((1, width), lm.tokenizer.pad_id, np.int32)
            buf[0, : len(ids)] = ids
            nxt = int(jnp.argmax(apply(jnp.asarray(buf))[0, len(ids) - 1]))
            if nxt in lm.tokenizer.stop_ids:
                break
            ids.append(nxt)
            new.append(nxt)
        out.append(new)
    return out


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama", "gemma3_text"])
def test_tunix_sampler_matches_greedy_full_forward_decoding(tmp_path, family):
    texts = PROMPTS + ["<answer>3</answer>", "<answer>85</answer>"]
    # scale 0.5: a random model with confident (tie-free) argmaxes
    path = write_checkpoint(tmp_path / family, family, texts=texts, scale=0.5,
                            layers=7 if family == "gemma3_text" else 2)
    lm = build_lm(from_mapping({"base_model": {"path": str(path)}, "lora": None, "train": {"max_len": 64}}))
    rows = [lm.tokenizer.encode_prompt(p, 48) for p in PROMPTS]
    assert len({len(r) for r in rows}) > 2  # prompts of different lengths share a batch: left padding matters
    want = reference_greedy(lm, rows, 10)
    assert sum(map(len, want)) > 2 * len(rows)  # not all stopping at once: the decoding steps are compared too
    got = lm.sample((lm.params, lm.frozen), rows, 10, batch_size=3)  # two batches, the last one padded
    assert got == want
