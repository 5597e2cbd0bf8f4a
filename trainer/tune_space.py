"""A tune's search space, checked against the run config schema before anything starts.

``{"train.learning_rate": {"loguniform": [1e-4, 1e-2]}, "model.d_model": {"choice": [32, 64]}}``:
each key names a run-config field (``SECTION.FIELD`` of ``model``, ``train``
or ``lora``, or ``preset``), each value one distribution: ``choice`` (a
non-empty list), ``uniform`` / ``loguniform`` (``[low, high]``, floats) or
``randint`` (``[low, high)``, integers, ``high`` excluded as in Ray Tune).
Every value a trial could get is checked with ``trainer.config.from_mapping``
on the base config (the ends of a range, each choice, and every combination
of choices), so a trial never fails on a config the space made.

Pure Python (no Ray, no JAX): the CLI checks a space before it starts Ray,
and the read API picks a tune's best trial with ``best_trial``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.config import (
    PRESETS,
    ConfigError,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    from_mapping,
)
from trainer.runlog import FINISHED

MAX_SAMPLES = 100
KINDS = ("choice", "uniform", "loguniform", "randint")
SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "lora": LoraConfig}
METRICS = {"eval_loss": "min", "loss": "min", "exact_match": "max"}
"""What ``--metric`` may rank trials by, and its natural direction: the scorecard's eval loss, the last
training loss, the scorecard's exact match."""
MAX_COMBINATIONS = 10_000  # choices multiplied out beyond this are checked one by one only


class SpaceError(ConfigError):
    """A search space, or a tune's bounds, that cannot work; the message names the key to fix."""


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``path`` (``train.learning_rate``), its distribution and the arguments."""

    path: str
    kind: str
    args: tuple[Any, ...]  # choice: the values; the others: (low, high)

    @property
    def largest(self) -> Any:
        """The largest value a trial can get (numbers only)."""
        if self.kind == "choice":
            return max(self.args)
        return self.args[1] - 1 if self.kind == "randint" else self.args[1]


@dataclass(frozen=True)
class Space:
    """A checked search space over a base run config."""

    base: Mapping[str, Any]
    dimensions: tuple[Dimension, ...]

    def config_of(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The run config of one trial: the base config with the sampled values (``{path: value}``) set."""
        config = copy.deepcopy(dict(self.base))
        for dim in self.dimensions:
            _set(config, dim.path, _plain(sample[dim.path]))
        return config

    def largest_total_steps(self) -> int:
        """The most optimizer updates a trial can run (the scheduler's horizon)."""
        for dim in self.dimensions:
            if dim.path == "train.total_steps":
                return int(dim.largest)
        presets = next((d.args for d in self.dimensions if d.path == "preset"), None)
        if presets is not None:
            return max(from_mapping({**self.base, "preset": p}).train.total_steps for p in presets)
        return from_mapping(self.base).train.total_steps


def _plain(value: Any) -> Any:
    """Ray samples numpy scalars; the run config wants Python numbers."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)) else value


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    if path == "preset":
        config["preset"] = value
        return
    section, name = path.split(".", 1)
    inner = config.get(section)
    config[section] = {**(inner if isinstance(inner, Mapping) else {}), name: value}


def _field_type(path: str) -> Any:
    """The annotated type of ``path``'s field; SpaceError naming the known fields when there is none."""
    if path == "preset":
        return str
    section, dot, name = path.partition(".")
    if not dot or section not in SECTIONS:
        raise SpaceError(
            f"space key {path!r} names no run-config field: use SECTION.FIELD with SECTION one of "
            f"{sorted(SECTIONS)} (e.g. train.learning_rate), or preset"
        )
    hints = typing.get_type_hints(SECTIONS[section])
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in names:
        raise SpaceError(f"space key {path!r}: {section} has no field {name!r}; its fields are {names}")
    return hints[name]


def _accepts(annotation: Any, kind: type) -> bool:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_accepts(a, kind) for a in typing.get_args(annotation))
    return annotation is kind


def _number(path: str, kind: str, value: Any, integer: bool) -> None:
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value))
    if isinstance(value, bool) or not ok:
        what = "integers" if integer else "finite numbers"
        raise SpaceError(f"space key {path!r}: {kind} takes [low, high] as {what}, got {value!r}")


def _dimension(path: Any, spec: Any) -> Dimension:
    if not isinstance(path, str):
        raise SpaceError(f"space keys must be strings like 'train.learning_rate', got {path!r}")
    annotation = _field_type(path)
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpaceError(
            f"space key {path!r} must map to one distribution, one of {list(KINDS)}, e.g. "
            f'{{"choice": [32, 64]}} or {{"loguniform": [1e-4, 1e-2]}}; got {spec!r}'
        )
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"space key {path!r}: choice needs a non-empty list of values, got {args!r}")
        if path == "preset" and any(a not in PRESETS for a in args):
            raise SpaceError(f"space key 'preset': choose among {sorted(PRESETS)}, got {args!r}")
        return Dimension(path, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(f"space key {path!r}: {kind} takes a list [low, high], got {args!r}")
    integer = kind == "randint"
    wanted = int if integer else float
    if not _accepts(annotation, wanted):
        instead = "choice" if not _accepts(annotation, int) and not _accepts(annotation, float) else (
            "uniform or loguniform" if integer else "randint or choice")
        raise SpaceError(
            f"space key {path!r}: {kind} draws {'integers' if integer else 'floats'}, but {path} holds "
            f"{getattr(annotation, '__name__', annotation)}; use {instead}"
        )
    low, high = args
    for value in args:
        _number(path, kind, value, integer)
    if low >= high:
        raise SpaceError(f"space key {path!r}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"space key {path!r}: loguniform needs low > 0 (it draws on a log scale), got {low}")
    return Dimension(path, kind, (low, high))


def _check(base: Mapping[str, Any], assignments: dict[str, Any], what: str) -> None:
    config = copy.deepcopy(dict(base))
    for path, value in assignments.items():
        _set(config, path, value)
    try:
        from_mapping(config)
    except ConfigError as exc:
        raise SpaceError(f"{what} makes an invalid run config: {exc}") from None


def parse_space(raw: Any, base: Mapping[str, Any] | None = None) -> Space:
    """Check ``raw`` (the space JSON) against ``base`` (a run config; default the tiny preset).

    Raises:
        SpaceError: an unknown field, a distribution of the wrong type for its
            field, an empty choice, low >= high, loguniform low <= 0, or a
            value the run config refuses (the message names the key).
        ConfigError: the base config itself is invalid.
    """
    base = dict(base or {})
    from_mapping(base)
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(
            'the space must be a non-empty JSON object like {"train.learning_rate": {"loguniform": [1e-4, 1e-2]}}'
        )
    dims = tuple(_dimension(path, spec) for path, spec in raw.items())
    for dim in dims:
        ends = dim.args if dim.kind == "choice" else (dim.args[0], dim.args[1] - 1 if dim.kind == "randint"
                                                       else dim.args[1])
        for value in dict.fromkeys(ends):
            _check(base, {dim.path: value}, f"space key {dim.path!r}: {dim.kind} value {value!r}")
    choices = [d for d in dims if d.kind == "choice"]
    if len(choices) > 1 and math.prod(len(d.args) for d in choices) <= MAX_COMBINATIONS:
        for combination in itertools.product(*(d.args for d in choices)):
            together = dict(zip((d.path for d in choices), combination))
            _check(base, together, f"the combination {together}")
    return Space(base, dims)


def check_bounds(samples: int, max_concurrent: int | None, metric: str, mode: str | None) -> str:
    """The tune's own bounds; returns the mode (the metric's natural one when ``mode`` is None).

    Raises:
        SpaceError: samples outside 1..100, max_concurrent < 1, an unknown metric or mode.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise SpaceError(f"--samples must be between 1 and {MAX_SAMPLES}, got {samples}")
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                       or max_concurrent < 1):
        raise SpaceError(f"--max-concurrent must be 1 or more, got {max_concurrent}")
    if metric not in METRICS:
        raise SpaceError(f"--metric must be one of {sorted(METRICS)}, got {metric!r}")
    if mode is not None and mode not in ("min", "max"):
        raise SpaceError(f"--mode must be min or max, got {mode!r}")
    return mode or METRICS[metric]


def best_trial(trials: list[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any] | None:
    """The completed trial with the best ``metric`` (ties: the earliest); None when none completed with it.

    Each trial has ``status`` and the metric's value under its name (``eval_loss``, ``loss``, ``exact_match``).
    """
    ranked = [t for t in trials if t.get("status") == "completed" and isinstance(t.get(metric), (int, float))
              and math.isfinite(t[metric])]
    if not ranked:
        return None
    pick = min if mode == "min" else max
    return pick(ranked, key=lambda t: t[metric])


def tune_status(statuses: list[str]) -> str:
    """A tune's status from its trials': running while one runs, else cancelled if one was, else completed."""
    if any(s not in FINISHED for s in statuses):
        return "running"
    return "cancelled" if "cancelled" in statuses else "completed"


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, Mapping):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def varied_fields(configs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each run config, the fields (``train.learning_rate``) whose values differ among ``configs``:
    what a tune's trials were given, read back from their run events."""
    leaves = [_leaves(c) for c in configs]
    paths = sorted({p for leaf in leaves for p in leaf})
    varied = [p for p in paths if len({json.dumps(leaf.get(p), sort_keys=True) for leaf in leaves}) > 1]
    return [{p: leaf.get(p) for p in varied} for leaf in leaves]


__all__ = ["MAX_SAMPLES", "METRICS", "Dimension", "Space", "SpaceError", "best_trial", "check_bounds",
           "parse_space", "tune_status", "varied_fields"]
