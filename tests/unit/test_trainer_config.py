"""Trainer config: presets are valid, bad input is refused naming the field."""

import pytest

from devtools.generator import generate_events
from schemas.errors import ConfigurationError
from trainer.config import (
    ARITH,
    SMALL,
    TINY,
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_mapping,
)

pytestmark = pytest.mark.unit


def test_presets_and_overrides():
    assert from_mapping({}) == TINY
    assert from_mapping({"preset": "arith"}) == ARITH
    p = from_mapping({"preset": "small", "train": {"seed": 3}, "model": {"n_layers": 1}})
    assert p.train.seed == 3 and p.model.n_layers == 1
    assert p.model.d_model == SMALL.model.d_model


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"train": {"batchsize": 4}}, "batchsize"),
        ({"model": {"d_model": 0}}, "ModelConfig.d_model"),
        ({"model": {"n_heads": 3}}, "ModelConfig.n_heads"),
        ({"model": {"dropout": 0.1}}, "ModelConfig.dropout"),
        ({"model": {"vocab_size": 100}}, "ModelConfig.vocab_size"),
        ({"train": {"learning_rate": -1.0}}, "TrainConfig.learning_rate"),
        ({"train": {"learning_rate": float("nan")}}, "TrainConfig.learning_rate"),
        ({"train": {"batch_size": True}}, "TrainConfig.batch_size"),
        ({"train": {"batch_size": "8"}}, "TrainConfig.batch_size"),
        ({"train": {"dtype": "float16"}}, "TrainConfig.dtype"),
        ({"train": {"warmup_steps": 50, "total_steps": 10}}, "TrainConfig.warmup_steps"),
        ({"preset": "huge"}, "preset"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"train": [1, 2]}, "TrainConfig"),
    ],
)
def test_refusals_name_the_field(mapping, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        from_mapping(mapping)
    assert isinstance(info.value, ConfigurationError)


def test_full_mapping_without_base():
    assert ModelConfig.from_mapping(ModelConfig().__dict__) == ModelConfig()
    with pytest.raises(ConfigError, match="missing"):
        TrainConfig.from_mapping({"seed": 1})


def test_arith_preset_sees_whole_arith_examples_and_decodes_far_enough():
    """Nothing of an arith trace is cut at ``max_len``, and decoding has room for the longest completion."""
    from trainer.data import examples_from_records
    from trainer.tokenizer import encode_prompt

    examples = examples_from_records(e.record for e in generate_events(3000, 12, 0.0, kind="arith"))
    for e in examples:
        prompt = encode_prompt(e.prompt, ARITH.model.max_len)
        completion = len(e.completion.encode()) + 1  # + EOS
        assert len(prompt) + completion <= ARITH.model.max_len
        assert completion <= ARITH.train.eval_max_new_tokens
