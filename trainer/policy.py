"""The training policy: which ready datasets the trainer service trains on, and how.

A JSON file of rules, tried in order; the first whose ``dataset`` pattern
(shell-style, ``fnmatch``) matches the dataset's name wins::

    {"rules": [
        {"dataset": "arith*", "config": {"preset": "arith"}, "workers": 2},
        {"dataset": "sft-*", "config": {"preset": "tiny", "train": {"total_steps": 50}}}
    ]}

The file's shape is checked when the trainer starts (a typo stops it there);
the ``config`` itself is checked per run by ``trainer.config.from_mapping``,
so a bad one fails that run with a ``failed`` event and the service goes on.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.config import ConfigError


class Rule(BaseModel):
    """Datasets whose name matches ``dataset`` train with ``config`` on ``workers`` actors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, description="fnmatch pattern on the dataset name, e.g. 'sft-*'.")
    config: dict[str, Any] | None = Field(default=None, description="trainer config (default: the tiny preset).")
    workers: int = Field(default=1, ge=1, le=64, description="Ray actors of each run.")

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


__all__ = ["Policy", "Rule", "load_policy", "parse_policy"]
