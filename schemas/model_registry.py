"""The model registry as a fold of models.events: versions, stages and gates, with no I/O.

models.events is keyed by model name, so one partition orders every event of
a name, and folding a name's events in offset order gives the same registry
to every reader (CLI, trainer, read API from the warehouse). The rules:

- A ``registered`` event is accepted only if its version is the next one for
  its name (1 + the accepted registrations before it). Two concurrent
  registrations that both chose N: the first in the log gets N, the second is
  ignored, and its registrant (which reads its own offset back) retries with
  N+1. So versions are dense and decided by the log alone.
- ``promoted`` puts a version in a stage; the version that held that stage
  leaves it. ``archived`` takes a version out of every stage.
- ``gated`` appends a gate result to the version.
- An event naming a version that was never accepted is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.errors import TracestreamError

EVENT_TYPES = ("registered", "promoted", "archived", "gated")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ARCHIVED = "archived"
HIGHER_IS_BETTER = {"exact_match": True, "loss": False, "perplexity": False}
"""Metrics a gate compares, and which way is better."""


class ModelRegistryError(TracestreamError):
    """Bad input to the model registry: the message says what to fix."""


class UnknownModel(ModelRegistryError):
    """No such model name or version on models.events."""


@dataclass(frozen=True)
class ModelRef:
    """``NAME``, ``NAME@VERSION`` or ``NAME@STAGE``, as a user writes it."""

    name: str
    version: int | None = None
    stage: str | None = None

    def __str__(self) -> str:
        return self.name + (f"@{self.version}" if self.version else f"@{self.stage}" if self.stage else "")


def check_model_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ModelRegistryError(
            f"model name {name!r} is not valid: use 1-128 letters, digits, dots, dashes or underscores, "
            "starting with a letter or digit"
        )
    return name


def check_stage(stage: str) -> str:
    if not STAGE.match(stage or "") or stage == ARCHIVED:
        raise ModelRegistryError(
            f"stage {stage!r} is not valid: use a lowercase word such as staging or production "
            f"({ARCHIVED!r} is what `models archive` does)"
        )
    return stage


def parse_ref(text: str, *, need_version: bool = False) -> ModelRef:
    """Parse ``NAME``, ``NAME@VERSION`` (an integer >= 1) or ``NAME@STAGE``.

    ``need_version``: a bare NAME is refused as ambiguous (which version?).
    """
    name, at, rest = (text or "").partition("@")
    if "@" in rest or (at and not rest):
        raise ModelRegistryError(f"{text!r} is not NAME, NAME@VERSION or NAME@STAGE (e.g. arith@2, arith@production)")
    check_model_name(name)
    if not at:
        if need_version:
            raise ModelRegistryError(
                f"{text!r} is ambiguous: name the version, NAME@VERSION or NAME@STAGE (e.g. {name}@1, "
                f"{name}@production); `tracestream models show {name}` lists them"
            )
        return ModelRef(name)
    if rest.isdigit():
        version = int(rest)
        if not 1 <= version < 2**31:
            raise ModelRegistryError(f"{text!r}: a version is an integer from 1")
        return ModelRef(name, version=version)
    if rest.lstrip("-+").isdigit():
        raise ModelRegistryError(f"{text!r}: a version is an integer from 1")
    try:
        return ModelRef(name, stage=check_stage(rest))
    except ModelRegistryError as exc:
        raise ModelRegistryError(f"{text!r}: after @ comes a version (an integer from 1) or a stage; {exc}") from None


@dataclass
class ModelVersion:
    """One accepted version of a model, with everything that happened to it since."""

    name: str
    version: int
    run_id: str
    registered_at: Any
    dataset: dict[str, Any]
    artifacts: list[dict[str, Any]]
    scorecard: dict[str, Any]
    partition: int
    offset: int
    stage: str | None = None
    """The stage it holds now, ``archived``, or None."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """promoted / archived events, in order."""
    gates: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Plain JSON (times as ISO text; artifacts with their file count, not every file)."""
        return {
            "name": self.name, "version": self.version, "run_id": self.run_id,
            "registered_at": _iso(self.registered_at), "stage": self.stage, "dataset": self.dataset,
            "artifacts": [{k: a[k] for k in ("kind", "path", "sha256")} | {"files": len(a.get("files") or ())}
                          for a in self.artifacts],
            "scorecard": self.scorecard,
            "history": [{**h, "at": _iso(h["at"])} for h in self.history],
            "gates": [{**g, "at": _iso(g["at"])} for g in self.gates],
        }


@dataclass
class Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    """Stage → the version holding it."""

    @property
    def latest(self) -> ModelVersion | None:
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def next_version(self) -> int:
        return max(self.versions, default=0) + 1

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names (a bare name: the latest); raises UnknownModel."""
        if ref.version is not None:
            found = self.versions.get(ref.version)
        elif ref.stage is not None:
            found = self.versions.get(self.stages.get(ref.stage, 0))
        else:
            found = self.latest
        if found is None:
            known = ", ".join(f"{self.name}@{v}" for v in sorted(self.versions)) or "none"
            stages = ", ".join(f"{s}: {self.name}@{v}" for s, v in sorted(self.stages.items())) or "none"
            raise UnknownModel(f"model {ref} does not exist; versions: {known}; stages: {stages}")
        return found


class Registry:
    """Every model folded from models.events (feed events per partition in offset order)."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.ignored: list[tuple[int, int, str]] = []
        """(partition, offset, why) of events the fold did not apply."""

    def apply(self, event: dict[str, Any], partition: int, offset: int) -> bool:
        """Fold one decoded ModelEvent; False when the rules ignore it."""
        name, version, kind = event["name"], event["version"], event["event_type"]
        model = self.models.get(name)
        if kind == "registered":
            model = model or Model(name)
            if version != model.next_version:
                return self._ignore(partition, offset, f"{name}@{version} registered again; the log gave it to "
                                    f"run {model.versions[version].run_id}" if version in model.versions else
                                    f"{name}@{version} is not the next version ({model.next_version})")
            self.models[name] = model
            model.versions[version] = ModelVersion(
                name, version, event["run_id"], event["at"], dict(event.get("dataset") or {}),
                [dict(a) for a in event.get("artifacts") or ()], _scorecard(event.get("scorecard")),
                partition, offset)
            return True
        found = model.versions.get(version) if model else None
        if found is None:
            return self._ignore(partition, offset, f"{kind} names {name}@{version}, which was never registered")
        entry = {"event_type": kind, "at": event["at"], "stage": event.get("stage"), "by": event.get("by"),
                 "reason": event.get("reason"), "partition": partition, "offset": offset}
        if kind == "promoted":
            self._leave_stages(model, version)
            previous = model.stages.get(event["stage"])
            if previous is not None and previous != version:
                model.versions[previous].stage = None
            model.stages[event["stage"]] = version
            found.stage = event["stage"]
            found.history.append(entry)
        elif kind == "archived":
            self._leave_stages(model, version)
            found.stage = ARCHIVED
            found.history.append(entry)
        elif kind == "gated":
            found.gates.append({**dict(event["gate"] or {}), "at": event["at"], "by": event.get("by"),
                                "partition": partition, "offset": offset})
        else:
            return self._ignore(partition, offset, f"unknown event type {kind!r}")
        return True

    @staticmethod
    def _leave_stages(model: Model, version: int) -> None:
        for stage, holder in list(model.stages.items()):
            if holder == version:
                del model.stages[stage]

    def _ignore(self, partition: int, offset: int, why: str) -> bool:
        self.ignored.append((partition, offset, why))
        return False

    def model(self, name: str) -> Model:
        found = self.models.get(name)
        if found is None:
            known = ", ".join(sorted(self.models)) or "none yet"
            raise UnknownModel(f"no model named {name!r}; known models: {known}. "
                               "Register one with `tracestream models register RUN --name NAME`")
        return found

    def resolve(self, ref: ModelRef) -> ModelVersion:
        return self.model(ref.name).resolve(ref)

    def by_run(self, run_id: str) -> list[ModelVersion]:
        return [v for m in self.models.values() for v in m.versions.values() if v.run_id == run_id]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _scorecard(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


@dataclass(frozen=True)
class GateOutcome:
    metric: str
    max_drop: float
    candidate: float
    baseline: float
    drop: float
    passed: bool
    eval_sha256: str


def compare(candidate: ModelVersion, baseline: ModelVersion, metric: str, max_drop: float) -> GateOutcome:
    """Compare two versions' scorecards; refuses (ModelRegistryError) what cannot be compared fairly."""
    if metric not in HIGHER_IS_BETTER:
        raise ModelRegistryError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    if not isinstance(max_drop, (int, float)) or max_drop != max_drop or max_drop < 0 or max_drop == float("inf"):
        raise ModelRegistryError(f"--max-drop must be a finite number >= 0, got {max_drop!r}")
    ours, theirs = candidate.dataset.get("eval_sha256", ""), baseline.dataset.get("eval_sha256", "")
    if not ours or ours != theirs:
        raise ModelRegistryError(
            f"{candidate.name}@{candidate.version} and {baseline.name}@{baseline.version} were evaluated on "
            f"different eval splits (eval_sha256 {ours[:12] or 'none'} of "
            f"{_dataset_text(candidate)} vs {theirs[:12] or 'none'} of {_dataset_text(baseline)}); "
            "their scorecards cannot be compared. Train both on datasets with the same eval split."
        )
    if not candidate.dataset.get("eval_count"):
        raise ModelRegistryError(f"{_dataset_text(candidate)} has an empty eval split: there is no score to gate on")
    values = []
    for version in (candidate, baseline):
        value = version.scorecard.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ModelRegistryError(f"{version.name}@{version.version}'s scorecard has no {metric} "
                                     f"(it has: {', '.join(sorted(version.scorecard)) or 'nothing'})")
        values.append(float(value))
    ours_value, theirs_value = values
    drop = theirs_value - ours_value if HIGHER_IS_BETTER[metric] else ours_value - theirs_value
    return GateOutcome(metric, float(max_drop), ours_value, theirs_value, drop, drop <= max_drop + 1e-12, ours)


def _dataset_text(version: ModelVersion) -> str:
    d = version.dataset
    return f"{d.get('name')}@{d.get('version')}" if d else "no dataset"


__all__ = ["ARCHIVED", "HIGHER_IS_BETTER", "GateOutcome", "Model", "ModelRef", "ModelRegistryError",
           "ModelVersion", "Registry", "UnknownModel", "check_model_name", "check_stage", "compare", "parse_ref"]
