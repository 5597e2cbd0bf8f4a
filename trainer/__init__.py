"""Byte-level transformer SFT trainer: config, tokenizer, model, train step, checkpoints, eval, loop."""
