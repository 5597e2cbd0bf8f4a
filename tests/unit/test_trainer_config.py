"""Trainer config: presets are valid, bad input is refused naming the field."""

import pytest

from schemas.errors import ConfigurationError
from trainer.config import (
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
