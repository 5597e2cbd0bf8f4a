"""A policy rule's model part: register_as, gate and promote_to are checked when the trainer starts."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError
from trainer.policy import parse_policy

pytestmark = pytest.mark.unit


def test_a_rule_names_the_model_its_gate_and_the_stage_it_promotes_to():
    rule = parse_policy({"rules": [{"dataset": "arith*", "register_as": "arith", "promote_to": "production",
                                    "gate": {"against": "production", "metric": "loss", "max_drop": 0.1}}]}
                        ).rule_for("arith-2")
    assert (rule.register_as, rule.promote_to) == ("arith", "production")
    assert (rule.gate.against, rule.gate.metric, rule.gate.max_drop) == ("production", "loss", 0.1)
    defaults = parse_policy({"rules": [{"dataset": "a", "register_as": "m", "gate": {}}]}).rules[0].gate
    assert (defaults.against, defaults.metric, defaults.max_drop) == ("production", "exact_match", 0.02)
    assert parse_policy({"rules": [{"dataset": "a"}]}).rules[0].register_as is None


@pytest.mark.parametrize(("rule", "says"), [
    ({"register_as": "bad name"}, "rules.0.register_as: .*model name 'bad name' is not valid"),
    ({"register_as": "m", "promote_to": "Prod!"}, "rules.0.promote_to: .*stage 'Prod!' is not valid"),
    ({"register_as": "m", "gate": {"metric": "bleu"}}, "rules.0.gate.metric: .*unknown metric 'bleu'"),
    ({"register_as": "m", "gate": {"max_drop": -1}}, "rules.0.gate.max_drop"),
    ({"register_as": "m", "gate": {"against": "archived"}}, "rules.0.gate.against"),
    ({"register_as": "m", "gate": {"agianst": "production"}}, "rules.0.gate.agianst"),
    ({"gate": {}}, "gate and promote_to need register_as"),
    ({"promote_to": "staging"}, "gate and promote_to need register_as"),
])
def test_a_bad_model_part_stops_the_trainer_at_start_naming_the_field(rule, says):
    with pytest.raises(ConfigError, match=says):
        parse_policy({"rules": [{"dataset": "a", **rule}]})
