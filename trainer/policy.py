"""The training policy: which ready datasets the trainer service trains on, and how.

A JSON file of rules, tried in order; the first whose ``dataset`` pattern
(shell-style, ``fnmatch``) matches the dataset's name wins::

    {"rules": [
        {"dataset": "arith*", "config": {"preset": "arith"}, "workers": 2},
        {"dataset": "sft-*", "config": {"preset": "tiny", "train": {"total_steps": 50}}}
    ]}

A rule may also name the model its completed runs become (``register_as``),
a regression gate the new version must pass against a stage of that model
(``gate``: against, metric, max_drop) and the stage it then takes
(``promote_to``); see ``trainer.service``.

The file's shape is checked when the trainer starts (a typo stops it there);
the ``config`` itself is checked per run by ``trainer.config.from_mapping``,
so a bad one fails that run with a ``failed`` event and the service goes on.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.model_registry import (
    HIGHER_IS_BETTER,
    ModelRegistryError,
    check_model_name,
    check_stage,
)
from trainer.config import ConfigError


def _checked(check, value):
    """A registry check as a pydantic validation error (so the policy's message names the field)."""
    try:
        return check(value)
    except ModelRegistryError as exc:
        raise ValueError(str(exc)) from None


class Gate(BaseModel):
    """Before promoting, compare the new version with the one holding ``against`` (a stage of the same model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    against: str = Field(default="production", description="Stage whose holder is the baseline.")
    metric: str = Field(default="exact_match", description=f"One of {', '.join(HIGHER_IS_BETTER)}.")
    max_drop: float = Field(default=0.02, ge=0, allow_inf_nan=False, description="Largest regression allowed.")

    @field_validator("against")
    @classmethod
    def _stage(cls, value: str) -> str:
        return _checked(check_stage, value)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
        return value


class Rule(BaseModel):
    """Datasets whose name matches ``dataset`` train with ``config`` on ``workers`` actors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, description="fnmatch pattern on the dataset name, e.g. 'sft-*'.")
    config: dict[str, Any] | None = Field(default=None, description="trainer config (default: the tiny preset).")
    workers: int = Field(default=1, ge=1, le=64, description="Ray actors of each run.")
    register_as: str | None = Field(default=None, description="Register each completed run as the next version of this model.")
    gate: Gate | None = Field(default=None, description="Regression gate the new version must pass to be promoted.")
    promote_to: str | None = Field(default=None, description="Stage the new version takes (after passing the gate).")

    @field_validator("register_as")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _checked(check_model_name, value)

    @field_validator("promote_to")
    @classmethod
    def _promote_stage(cls, value: str | None) -> str | None:
        return None if value is None else _checked(check_stage, value)

    @model_validator(mode="after")
    def _needs_a_model(self) -> Rule:
        if (self.gate is not None or self.promote_to is not None) and self.register_as is None:
            raise ValueError("gate and promote_to need register_as (the model the run becomes a version of)")
        return self

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.dataset)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = Field(description="Tried in order; the first match wins.")

    def rule_for(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(name)), None)


def parse_policy(value: Any, source: str = "policy") -> Policy:
    """Raises ConfigError naming each bad field of ``source``."""
    try:
        return Policy.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"{source} is not a valid training policy ({problems}); "
            'expected {"rules": [{"dataset": "PATTERN", "config": {...}, "workers": N}, ...]}'
        ) from None


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; raises ConfigError naming the file and what to fix."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the training policy {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"training policy {path} is not valid JSON: {exc}") from exc
    return parse_policy(value, f"training policy {path}")


__all__ = ["Gate", "Policy", "Rule", "load_policy", "parse_policy"]
