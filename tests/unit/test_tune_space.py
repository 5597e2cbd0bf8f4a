"""A tune's search space is checked against the run config schema before anything starts."""

from __future__ import annotations

import pytest

from trainer.tune_space import (
    SpaceError,
    best_trial,
    check_bounds,
    parse_space,
    varied_fields,
)

BASE = {"preset": "tiny", "train": {"total_steps": 40}}


def test_a_space_over_sections_makes_each_trials_config():
    space = parse_space({"train.learning_rate": {"loguniform": [1e-4, 1e-2]}, "model.d_model": {"choice": [32, 64]},
                         "train.batch_size": {"randint": [2, 9]}}, BASE)
    assert [(d.path, d.kind, d.args) for d in space.dimensions] == [
        ("train.learning_rate", "loguniform", (1e-4, 1e-2)), ("model.d_model", "choice", (32, 64)),
        ("train.batch_size", "randint", (2, 9))]
    config = space.config_of({"train.learning_rate": 3e-3, "model.d_model": 32, "train.batch_size": 8})
    assert config == {"preset": "tiny", "train": {"total_steps": 40, "learning_rate": 3e-3, "batch_size": 8},
                      "model": {"d_model": 32}}
    assert space.base == BASE  # the base config is not changed by a trial
    assert space.largest_total_steps() == 40


def test_numpy_samples_become_python_numbers():
    np = pytest.importorskip("numpy")
    space = parse_space({"train.batch_size": {"randint": [2, 9]}})
    config = space.config_of({"train.batch_size": np.int64(4)})
    assert type(config["train"]["batch_size"]) is int


def test_the_horizon_is_the_largest_total_steps_a_trial_can_get():
    assert parse_space({"train.total_steps": {"randint": [10, 31]}}, BASE).largest_total_steps() == 30
    assert parse_space({"train.total_steps": {"choice": [5, 50]}}, BASE).largest_total_steps() == 50
    assert parse_space({"preset": {"choice": ["tiny", "small"]}}).largest_total_steps() == 300


@pytest.mark.parametrize("space, message", [
    ({"train.nope": {"choice": [1]}}, "space key 'train.nope': train has no field 'nope'; its fields are"),
    ({"learning_rate": {"choice": [0.1]}}, "space key 'learning_rate' names no run-config field"),
    ({"optimizer.lr": {"choice": [0.1]}}, "space key 'optimizer.lr' names no run-config field"),
    ({"train.learning_rate": {"uniform": [0.01, 0.001]}}, "uniform needs low < high, got [0.01, 0.001]"),
    ({"train.learning_rate": {"uniform": [0.01, 0.01]}}, "uniform needs low < high"),
    ({"train.batch_size": {"randint": [4, 4]}}, "randint needs low < high"),
    ({"train.learning_rate": {"loguniform": [0, 0.01]}}, "loguniform needs low > 0"),
    ({"train.learning_rate": {"loguniform": [-1, 0.01]}}, "loguniform needs low > 0"),
    ({"model.d_model": {"choice": []}}, "choice needs a non-empty list"),
    ({"model.d_model": {"choice": 32}}, "choice needs a non-empty list"),
    ({"model.d_model": {"uniform": [32, 64]}}, "uniform draws floats, but model.d_model holds int; use randint"),
    ({"train.learning_rate": {"randint": [1, 3]}}, "randint draws integers, but train.learning_rate holds float"),
    ({"train.dtype": {"uniform": [1.0, 2.0]}}, "train.dtype holds str; use choice"),
    ({"train.batch_size": {"randint": [1.5, 4]}}, "randint takes [low, high] as integers, got 1.5"),
    ({"train.learning_rate": {"uniform": [0.001, "x"]}}, "uniform takes [low, high] as finite numbers"),
    ({"train.learning_rate": {"uniform": [0.001]}}, "uniform takes a list [low, high]"),
    ({"train.learning_rate": {"grid": [0.1]}}, "must map to one distribution, one of ['choice', 'uniform'"),
    ({"train.learning_rate": {"choice": [0.1], "uniform": [0.1, 0.2]}}, "must map to one distribution"),
    ({"train.learning_rate": {"uniform": [0, 0.01]}},
     "uniform value 0 makes an invalid run config: TrainConfig.learning_rate must be in (0.0, 10.0], got 0"),
    ({"model.d_model": {"choice": [30]}}, "ModelConfig.n_heads (4) must divide ModelConfig.d_model (30)"),
    ({"model.d_model": {"choice": ["64"]}}, "ModelConfig.d_model must be an integer, got '64'"),
    ({"train.dtype": {"choice": ["float16"]}}, "TrainConfig.dtype must be one of"),
    ({"train.warmup_steps": {"randint": [0, 50]}}, "warmup_steps (49) must not exceed TrainConfig.total_steps (40)"),
    ({"model.d_model": {"choice": [36, 64]}, "model.n_heads": {"choice": [4, 8]}},  # each alone is fine
     "the combination {'model.d_model': 36, 'model.n_heads': 8} makes an invalid run config"),
    ({"preset": {"choice": ["huge"]}}, "space key 'preset': choose among ['arith', 'small', 'tiny']"),
    ({}, "the space must be a non-empty JSON object"),
    ([["train.learning_rate", 0.1]], "the space must be a non-empty JSON object"),
])
def test_a_bad_space_is_refused_naming_the_key(space, message):
    with pytest.raises(SpaceError) as raised:
        parse_space(space, BASE)
    assert message in str(raised.value)


@pytest.mark.parametrize("samples, concurrent, metric, mode, message", [
    (0, None, "eval_loss", None, "--samples must be between 1 and 100, got 0"),
    (101, None, "eval_loss", None, "--samples must be between 1 and 100, got 101"),
    (4, 0, "eval_loss", None, "--max-concurrent must be 1 or more, got 0"),
    (4, None, "accuracy", None, "--metric must be one of ['eval_loss', 'exact_match', 'loss']"),
    (4, None, "loss", "down", "--mode must be min or max"),
])
def test_bounds_are_checked(samples, concurrent, metric, mode, message):
    with pytest.raises(SpaceError) as raised:
        check_bounds(samples, concurrent, metric, mode)
    assert message in str(raised.value)


def test_the_metric_gives_its_natural_mode():
    assert check_bounds(100, 1, "eval_loss", None) == "min"
    assert check_bounds(1, None, "exact_match", None) == "max"
    assert check_bounds(1, None, "exact_match", "min") == "min"


def test_the_best_trial_is_a_completed_one_with_the_metric():
    trials = [{"run_id": "a", "status": "stopped", "eval_loss": None, "loss": 0.1},
              {"run_id": "b", "status": "completed", "eval_loss": 2.0, "exact_match": 0.5},
              {"run_id": "c", "status": "completed", "eval_loss": 1.5, "exact_match": 0.5},
              {"run_id": "d", "status": "failed", "eval_loss": 0.1}]
    assert best_trial(trials, "eval_loss", "min")["run_id"] == "c"
    assert best_trial(trials, "exact_match", "max")["run_id"] == "b"  # a tie goes to the earlier trial
    assert best_trial(trials[:1], "eval_loss", "min") is None


def test_params_are_the_fields_where_trial_configs_differ():
    configs = [{"train": {"learning_rate": 0.1, "seed": 0}, "model": {"d_model": 32}},
               {"train": {"learning_rate": 0.2, "seed": 0}, "model": {"d_model": 32}}]
    assert varied_fields(configs) == [{"train.learning_rate": 0.1}, {"train.learning_rate": 0.2}]
    assert varied_fields(configs[:1]) == [{}]


def test_a_run_ends_on_the_same_events_everywhere():
    """One set of ending events, used by the log's fold and the warehouse's (api.queries.runs imports it)."""
    from trainer.runlog import FINISHED

    assert FINISHED == {"completed", "failed", "cancelled", "stopped"}
