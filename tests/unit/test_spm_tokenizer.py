"""A SentencePiece-only checkpoint: ``tokenizer.model`` converted to a ``tokenizers`` tokenizer encodes and
decodes as ``sentencepiece`` itself does, and a Gemma 3 directory without ``tokenizer.json`` trains."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sentencepiece as spm

from devtools.generator import generate_events
from devtools.hf_checkpoints import write_checkpoint
from trainer.config import from_mapping
from trainer.data import examples_from_records
from trainer.hf import CheckpointError, inspect_checkpoint
from trainer.loop import train_and_evaluate
from trainer.spm_tokenizer import load

pytestmark = pytest.mark.unit

EXAMPLES = examples_from_records(e.record for e in generate_events(40, seed=4, broken_share=0.0, kind="arith"))
TEXTS = [t for e in EXAMPLES for t in (e.prompt, e.completion)]
PROBES = ["What is 12 + 84?", "two  spaces inside", "café über 中文 😀 ∑", "x", "tabs\tand\nnewlines",
          "<answer>96</answer>"] + TEXTS[:30]


def sentencepiece_model(tmp_path: Path, model_type: str, dummy_prefix: bool, extra_whitespace: bool) -> Path:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=300, hard_vocab_limit=False,
        model_type=model_type, byte_fallback=True, add_dummy_prefix=dummy_prefix,
        remove_extra_whitespaces=extra_whitespace, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2)
    file = tmp_path / f"{model_type}-{dummy_prefix}-{extra_whitespace}.model"
    file.write_bytes(buf.getvalue())
    return file


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
@pytest.mark.parametrize(("dummy_prefix", "extra_whitespace"), [(False, False), (True, False), (True, True)])
def test_converted_tokenizer_encodes_and_decodes_as_sentencepiece(tmp_path, model_type, dummy_prefix,
                                                                 extra_whitespace):
    file = sentencepiece_model(tmp_path, model_type, dummy_prefix, extra_whitespace)
    sp = spm.SentencePieceProcessor(model_file=str(file))
    tok = load(file)
    assert tok.get_vocab_size(with_added_tokens=True) == sp.get_piece_size()
    for text in PROBES:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids), text
    marked = tok.encode("<start_of_turn>user\nWhat is 1 + 2?<end_of_turn>", add_special_tokens=False).ids
    assert marked[0] == sp.piece_to_id("<start_of_turn>") and marked[-1] == sp.piece_to_id("<end_of_turn>")


def test_a_gemma3_checkpoint_with_only_tokenizer_model_loads_and_trains(tmp_path):
    path = write_checkpoint(tmp_path / "gemma", "gemma3_text", texts=TEXTS, vocab_size=300, sentencepiece=True)
    assert (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").exists()
    ckpt = inspect_checkpoint(path)
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    prompt_ids, completion_ids = ckpt.tokenizer.split(EXAMPLES[0].prompt, EXAMPLES[0].completion)
    assert prompt_ids[:2] == [sp.piece_to_id("<bos>"), sp.piece_to_id("<start_of_turn>")]
    assert sp.piece_to_id("<end_of_turn>") in completion_ids
    preset = from_mapping({"base_model": {"path": str(path)}, "lora": {"rank": 4},
                           "train": {"max_len": 96, "batch_size": 4, "total_steps": 6, "warmup_steps": 1,
                                     "learning_rate": 1e-2, "eval_max_new_tokens": 4}})
    result = train_and_evaluate(preset.model, preset.train, EXAMPLES, EXAMPLES[:2], None, base=preset.base,
                                lora=preset.lora)
    losses = [m["loss"] for m in result.history]
    assert losses[-1] < losses[0]
    assert result.scorecard["items"] == 2


def test_a_broken_tokenizer_model_is_named(tmp_path):
    path = write_checkpoint(tmp_path / "gemma", "gemma3_text", texts=TEXTS, vocab_size=300, sentencepiece=True)
    (path / "tokenizer.model").write_bytes(b"\x08\x96not a model")
    with pytest.raises(CheckpointError, match="tokenizer.model is not a SentencePiece model"):
        inspect_checkpoint(path)
