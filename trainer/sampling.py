"""Batched, KV-cached greedy decoding of a base model through Tunix's sampler (``tunix.generate.sampler.Sampler``).

The prompts arrive as token ids (rendered with the checkpoint's chat
template by ``HFTokenizer.encode_prompt``); Tunix's sampler takes strings,
so each prompt's string is its index and the tokenizer adapter handed to the
sampler looks the ids up (``bos_id`` is None, so nothing is prepended: the
template already put the BOS where the model wants one). The sampler
left-pads the batch to a power of two, builds positions and the attention
mask from the padding, prefills the KV cache in one pass and then decodes
one cached position per step in a ``while_loop`` until every row has emitted
a stop token or ``max_new_tokens``. Llama models are traced inside
``trainer.hf.rope_fix`` as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class _IdsTokenizer:
    """What Tunix's ``TokenizerAdapter`` needs (encode, decode, bos_id, eos_id, pad_id) over pre-tokenized prompts."""

    def __init__(self, prompts: Sequence[Sequence[int]], tokenizer: Any) -> None:
        self.prompts = prompts
        self.tok = tokenizer

    def encode(self, text: str, **_: Any) -> list[int]:
        return [int(i) for i in self.prompts[int(text)]]

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return self.tok.decode(ids)

    def bos_id(self) -> None:
        return None

    def eos_id(self) -> int:
        return int(self.tok.eos_id)

    def pad_id(self) -> int:
        return int(self.tok.pad_id)


def tunix_sampler(graphdef: Any, shapes: Any, shape: Any, tokenizer: Any) -> Callable[..., list[list[int]]]:
    """``sample((params, frozen), prompt ids, max_new_tokens, batch_size)`` → generated ids per prompt.

    Each row's ids stop before its first stop token. One sampler (one
    compilation) serves every batch: batches have ``batch_size`` rows (the
    last padded with copies of its first prompt, dropped after) and one
    prompt length, the longest prompt's rounded up to a power of two.
    """

    def sample(p: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               batch_size: int = 64) -> list[list[int]]:
        import jax
        from flax import nnx
        from tunix.generate import sampler as tunix
        from tunix.generate import utils

        from trainer.hf import rope_fix

        if not prompts:
            return []
        params, frozen = p
        trained, rest = jax.tree.map(lambda a: a, shapes)
        nnx.replace_by_pure_dict(trained, params)
        nnx.replace_by_pure_dict(rest, frozen if frozen is not None else {})
        model = nnx.merge(graphdef, trained, rest)
        prompt_len = utils.next_power_of_2(max(len(x) for x in prompts))
        cache = tunix.CacheConfig(cache_size=prompt_len + max_new_tokens, num_layers=shape.num_layers,
                                  num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim)
        ids = _IdsTokenizer([], tokenizer)
        sampler = tunix.Sampler(model, ids, cache)
        size = min(batch_size, len(prompts))
        out: list[list[int]] = []
        for lo in range(0, len(prompts), size):
            chunk = list(prompts[lo: lo + size])
            n = len(chunk)
            ids.prompts = chunk + [chunk[0]] * (size - n)
            with rope_fix(shape):
                got = sampler([str(i) for i in range(size)], max_generation_steps=max_new_tokens,
                              max_prompt_length=prompt_len, eos_tokens=list(tokenizer.stop_ids), temperature=0.0)
            out += [[int(t) for t in row] for row in got.tokens[:n]]
        return out

    return sample


__all__ = ["tunix_sampler"]
