"""The training policy file: first matching rule wins; a malformed file is refused naming the field."""

from __future__ import annotations

import json

import pytest

from trainer.config import ConfigError
from trainer.policy import load_policy, parse_policy
from trainer.service import run_id_for

pytestmark = pytest.mark.unit


def test_first_matching_rule_wins_and_unmatched_names_get_none():
    policy = parse_policy({"rules": [
        {"dataset": "arith-*", "config": {"preset": "small"}, "workers": 2},
        {"dataset": "*", "config": {"preset": "tiny"}},
    ]})
    assert policy.rule_for("arith-easy").workers == 2
    assert policy.rule_for("arith-easy").config == {"preset": "small"}
    assert policy.rule_for("sft").config == {"preset": "tiny"} and policy.rule_for("sft").workers == 1
    assert parse_policy({"rules": [{"dataset": "sft"}]}).rule_for("sft-2") is None  # a pattern, not a prefix


@pytest.mark.parametrize(("value", "named"), [
    ({"rules": [{"dataset": "a", "worker": 2}]}, "rules.0.worker"),
    ({"rules": [{"dataset": "a", "workers": 0}]}, "rules.0.workers"),
    ({"rules": [{"config": {}}]}, "rules.0.dataset"),
    ({"rule": []}, "rule"),
    ([], "(top level)"),
])
def test_malformed_policies_are_refused_naming_the_field(value, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(value)


def test_policy_files_that_cannot_be_read_say_which_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the training policy"):
        load_policy(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{rules: ", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{broken} is not valid JSON"):
        load_policy(broken)
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({"rules": [{"dataset": "x"}]}), encoding="utf-8")
    assert load_policy(good).rule_for("x") is not None


def test_a_dataset_event_always_names_the_same_run():
    assert run_id_for("sft", 3, 0, 17) == run_id_for("sft", 3, 0, 17)
    assert len({run_id_for("sft", 3, 0, 17), run_id_for("sft", 3, 0, 18), run_id_for("sft", 4, 0, 17)}) == 3
