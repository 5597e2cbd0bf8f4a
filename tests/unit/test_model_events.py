"""The model registry's fold (versions, stages, gates), NAME@VERSION parsing and the gate's comparison."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.codec import AvroCodec
from schemas.contracts import MODEL_EVENT
from schemas.model_registry import (
    ModelRef,
    ModelRegistryError,
    Registry,
    UnknownModel,
    compare,
    parse_ref,
)
from schemas.registry import default_registry

pytestmark = pytest.mark.unit

T = datetime(2026, 11, 30, tzinfo=UTC)
EVAL = "e" * 64


def event(kind: str, version: int, name: str = "arith", run_id: str = "run-1", **fields) -> dict:
    base = {"name": name, "version": version, "event_type": kind, "at": T, "run_id": run_id, "dataset": None,
            "artifacts": [], "scorecard": None, "stage": None, "by": None, "reason": None, "gate": None}
    return {**base, **fields}


def registered(version: int, run_id: str, exact_match: float = 0.5, eval_sha256: str = EVAL, **fields) -> dict:
    dataset = {"name": "arith", "version": 1, "content_sha256": "c" * 64, "eval_sha256": eval_sha256,
               "eval_count": 40}
    return event("registered", version, run_id=run_id, dataset=dataset,
                 scorecard=json.dumps({"exact_match": exact_match, "loss": 1.0}), **fields)


def fold(*events: dict) -> Registry:
    registry = Registry()
    for offset, e in enumerate(events):
        registry.apply(e, 0, offset)
    return registry


def test_the_event_round_trips_through_its_avro_contract():
    codec = AvroCodec(default_registry())
    artifact = {"kind": "checkpoint", "path": "/runs/1/ckpt/8", "sha256": "a" * 64,
                "files": [{"path": "state/x", "size": 3, "sha256": "b" * 64}]}
    e = registered(1, "run-1", artifacts=[artifact])
    decoded, writer = codec.decode_latest(codec.encode(e, MODEL_EVENT), MODEL_EVENT)
    assert writer.name == MODEL_EVENT and decoded == e


def test_versions_are_dense_and_a_concurrent_registration_of_a_taken_version_is_ignored():
    registry = fold(registered(1, "run-a"), registered(1, "run-b"), registered(2, "run-b"), registered(5, "run-c"))
    model = registry.model("arith")
    assert sorted(model.versions) == [1, 2]
    assert model.versions[1].run_id == "run-a" and model.versions[2].run_id == "run-b"
    assert model.next_version == 3
    assert [(o, why.split(";")[0]) for _, o, why in registry.ignored] == [
        (1, "arith@1 registered again"), (3, "arith@5 is not the next version (3)")]


def test_a_promotion_moves_the_stage_and_archive_leaves_every_stage():
    registry = fold(
        registered(1, "a"), registered(2, "b"),
        event("promoted", 1, stage="production", by="ana", reason="first"),
        event("promoted", 2, stage="staging"),
        event("promoted", 2, stage="production"),
        event("promoted", 7, stage="production"),  # never registered: ignored
    )
    model = registry.model("arith")
    assert model.stages == {"production": 2}
    assert model.versions[1].stage is None and model.versions[2].stage == "production"
    assert model.versions[1].history[0]["by"] == "ana"
    assert registry.resolve(parse_ref("arith@production")).version == 2
    registry.apply(event("archived", 2), 0, 99)
    assert model.stages == {} and model.versions[2].stage == "archived"
    with pytest.raises(UnknownModel, match="arith@production does not exist"):
        registry.resolve(parse_ref("arith@production"))


@pytest.mark.parametrize("text, ref", [
    ("arith", ModelRef("arith")), ("arith@3", ModelRef("arith", version=3)),
    ("my.model-2_x@production", ModelRef("my.model-2_x", stage="production")),
])
def test_refs_parse(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text, says", [
    ("arith@", "not NAME, NAME@VERSION"), ("a@1@2", "not NAME, NAME@VERSION"), ("@1", "model name ''"),
    ("arith@0", "integer from 1"), ("arith@-1", "integer from 1"), ("arith@Prod!", "version .* or a stage"),
    ("bad name", "model name 'bad name' is not valid"), ("arith@archived", "or a stage"),
])
def test_malformed_refs_are_refused_naming_the_fix(text, says):
    with pytest.raises(ModelRegistryError, match=says):
        parse_ref(text)


def test_a_bare_name_is_ambiguous_where_a_version_is_needed():
    with pytest.raises(ModelRegistryError, match="ambiguous: name the version"):
        parse_ref("arith", need_version=True)


def test_unknown_models_and_versions_name_what_exists():
    registry = fold(registered(1, "a"))
    with pytest.raises(UnknownModel, match="no model named 'other'; known models: arith"):
        registry.resolve(parse_ref("other@1"))
    with pytest.raises(UnknownModel, match="arith@4 does not exist; versions: arith@1"):
        registry.resolve(parse_ref("arith@4"))


def test_the_gate_passes_within_max_drop_and_fails_beyond_it():
    registry = fold(registered(1, "a", exact_match=0.50), registered(2, "b", exact_match=0.48),
                    registered(3, "c", exact_match=0.40))
    model = registry.model("arith")
    within = compare(model.versions[2], model.versions[1], "exact_match", 0.02)
    assert within.passed and within.drop == pytest.approx(0.02)
    beyond = compare(model.versions[3], model.versions[1], "exact_match", 0.02)
    assert not beyond.passed and beyond.drop == pytest.approx(0.10)
    assert (beyond.candidate, beyond.baseline, beyond.eval_sha256) == (0.40, 0.50, EVAL)
    lower_is_better = compare(model.versions[3], model.versions[1], "loss", 0.0)
    assert lower_is_better.passed and lower_is_better.drop == 0.0


def test_the_gate_refuses_different_eval_splits_unknown_metrics_and_bad_bounds():
    registry = fold(registered(1, "a"), registered(2, "b", eval_sha256="f" * 64))
    model = registry.model("arith")
    with pytest.raises(ModelRegistryError, match="different eval splits"):
        compare(model.versions[2], model.versions[1], "exact_match", 0.02)
    with pytest.raises(ModelRegistryError, match="unknown metric 'bleu'"):
        compare(model.versions[1], model.versions[1], "bleu", 0.02)
    with pytest.raises(ModelRegistryError, match="--max-drop must be a finite number >= 0"):
        compare(model.versions[1], model.versions[1], "exact_match", -0.1)
    with pytest.raises(ModelRegistryError, match="has no perplexity"):
        compare(model.versions[1], model.versions[1], "perplexity", 0.1)
    empty = fold(registered(1, "a"), registered(2, "b")).model("arith")
    empty.versions[2].dataset["eval_count"] = 0
    with pytest.raises(ModelRegistryError, match="arith@1 has an empty eval split"):
        compare(empty.versions[2], empty.versions[1], "exact_match", 0.02)
