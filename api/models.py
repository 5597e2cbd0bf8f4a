"""Response shapes, for the OpenAPI document and its examples.

Hot endpoints send JSON the warehouse serialized already; these models
describe it (FastAPI does not re-validate a ``Response`` a handler returns).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_ID = "3f2a9c4e8b1d4e6f9a7c2b5d8e1f0a3c"


class TraceSummary(BaseModel):
    """A trace in a list: everything but the step bodies and the answer."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "trace_id": _ID, "trace_version": 1, "schema_version": 2, "source": "gsm8k",
        "created_at": "2026-11-22T05:00:00.000Z", "score": 0.9, "model": "tiny-lm", "meta": {"lang": "en"},
        "steps": 3, "prompt_preview": "What is 17 * 23?", "topic": "traces.valid", "partition": 1, "offset": 4211,
        "ingested_at": "2026-11-22T05:00:01.250Z"}})

    trace_id: str
    trace_version: int
    schema_version: int
    source: str
    created_at: str
    score: float | None
    model: str | None
    meta: dict[str, str]
    steps: int = Field(description="Number of steps.")
    prompt_preview: str = Field(description="The first 200 characters of the prompt.")
    topic: str
    partition: int
    offset: int
    ingested_at: str = Field(description="When the warehouse stored it: the list's order (then partition, offset).")


class TracePage(BaseModel):
    items: list[TraceSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same `order`) for the next page; null when this page was not full: "
                    "the walk has ended.")
    limit: int


class Step(BaseModel):
    i: int
    type: str
    content: str


class Trace(BaseModel):
    """A whole trace, with where it lives in the log."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "trace_id": _ID, "trace_version": 1, "schema_version": 2, "prompt": "What is 17 * 23?",
        "steps": [{"i": 0, "type": "thought", "content": "17 * 23 = 391"}], "final_answer": "391",
        "meta": {"lang": "en"}, "source": "gsm8k", "created_at": "2026-11-22T05:00:00.000Z", "score": None,
        "model": None, "topic": "traces.valid", "partition": 1, "offset": 4211,
        "ingested_at": "2026-11-22T05:00:01.250Z"}})

    trace_id: str
    trace_version: int
    schema_version: int
    prompt: str
    steps: list[Step]
    final_answer: str
    meta: dict[str, str]
    source: str
    created_at: str
    score: float | None
    model: str | None
    topic: str
    partition: int
    offset: int
    ingested_at: str


class StepPair(BaseModel):
    i: int
    a: Step | None
    b: Step | None
    same: bool


class TraceComparison(BaseModel):
    a: Trace
    b: Trace
    differing_fields: list[str] = Field(description="Top-level fields whose values differ (steps compared apart).")
    steps: list[StepPair] = Field(description="Steps aligned by index i.")


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"accepted": 1, "trace_ids": [_ID], "topic": "traces.raw"}})

    accepted: int
    trace_ids: list[str]
    topic: str


class DeadLetter(BaseModel):
    trace_id: str | None
    reason: str
    message: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_bytes: int
    failed_at: str
    topic: str
    partition: int
    offset: int
    ingested_at: str


class ReasonCount(BaseModel):
    stage: str
    reason: str
    count: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same `order`) for the next page; null: the walk has ended.")
    limit: int
    counts: list[ReasonCount] = Field(description="Dead letters by stage and reason, over all of them (stage filter applied).")


class DatasetVersion(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    status: str
    record_count: int
    train_count: int
    eval_count: int
    content_sha256: str
    error: str | None
    updated_at: str
    manifest: dict[str, Any]


class DatasetDetail(BaseModel):
    name: str
    versions: list[DatasetVersion]
    lineage: list[dict[str, Any]] = Field(description="Each version with the dataset it continues (its `since` parent).")


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "run_id": "run-1", "status": "running", "last_event": "metrics",
        "dataset": {"name": "gsm", "version": 1, "content_sha256": "ab12..."}, "workers": 1, "seed": 0,
        "steps": 40, "loss": 1.93, "exact_match": None, "scorecard": None, "error": None,
        "started_at": "2026-11-22T05:00:00.000Z", "updated_at": "2026-11-22T05:01:00.000Z"}})

    run_id: str
    status: str = Field(description="queued | running | cancelling | completed | failed | cancelled | stopped")
    last_event: str
    dataset: dict[str, Any]
    steps: int
    loss: float | None
    exact_match: float | None
    started_at: str | None
    updated_at: str | None


class RunDetail(BaseModel):
    run: RunSummary
    events: list[dict[str, Any]] = Field(description="Every event but metrics, in order (metrics: /metrics).")


class MetricPoint(BaseModel):
    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_s: float
    at: str


class RunMetrics(BaseModel):
    run_id: str
    points: list[MetricPoint]


class LeaderboardEntry(BaseModel):
    rank: int
    run_id: str
    dataset: dict[str, Any]
    score: float = Field(description="The primary score: exact_match of the run's latest scorecard.")
    loss: float | None
    scorecard: dict[str, Any]
    evaluated_at: str | None


class Leaderboard(BaseModel):
    metric: str
    entries: list[LeaderboardEntry]
