"""GET /api/tunes and /api/tunes/{id}: a tune's trials (runs sharing a tune_id), their loss curves and the best."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Readable, ReaderDep
from api.errors import ERROR_SCHEMA, InvalidRequest, NotFound
from api.queries import tunes as q
from trainer.tune_space import METRICS

router = APIRouter(prefix="/api/tunes", tags=["tunes"], dependencies=[Readable])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 404, 422)}


class TuneListing(BaseModel):
    tune_id: str
    trials: int
    started_at: str | None
    updated_at: str | None


class LossPoint(BaseModel):
    step: int
    loss: float


class Trial(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    status: str = Field(description="queued | running | completed | failed | cancelled | stopped (stopped early by "
                                    "the tune's ASHA scheduler; `error` says why)")
    params: dict[str, Any] = Field(description="The config fields this trial's value differs in from the others'.")
    config: dict[str, Any] = Field(description="The trial's whole run config.")
    steps: int
    loss: float | None = Field(description="The last training loss.")
    eval_loss: float | None
    exact_match: float | None
    checkpoint: str | None = Field(description="The last checkpoint's folder.")
    error: str | None
    curve: list[LossPoint] = Field(description="The training loss per step (the run's metrics events).")


class Tune(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "tune_id": "tune-3f2a9c4e8b1d", "status": "completed", "metric": "eval_loss", "mode": "min",
        "best": "tune-3f2a9c4e8b1d-00000", "trials": [{
            "run_id": "tune-3f2a9c4e8b1d-00000", "status": "completed", "params": {"train.learning_rate": 0.01},
            "config": {"model": {"d_model": 64}, "train": {"learning_rate": 0.01}}, "steps": 12, "loss": 3.04,
            "eval_loss": 3.01, "exact_match": 0.0, "checkpoint": "/runs/tune-3f2a9c4e8b1d-00000/checkpoints/12",
            "error": None, "curve": [{"step": 1, "loss": 5.5}, {"step": 2, "loss": 4.9}]}]}})

    tune_id: str
    status: str = Field(description="running while a trial runs; then cancelled if the tune was, else completed.")
    metric: str
    mode: str
    best: str | None = Field(description="The run id of the best completed trial by `metric`; null when none.")
    trials: list[Trial]


@router.get("", response_model=list[TuneListing], responses=_ERRORS, summary="Tunes")
async def list_tunes(reader: ReaderDep) -> list[dict]:
    """Every tune with its number of trials; oldest first."""
    return await reader.run(q.listing)


@router.get("/{tune_id}", response_model=Tune, responses=_ERRORS, summary="One tune: trials, loss curves, the best")
async def get_tune(
    reader: ReaderDep,
    tune_id: Annotated[str, Path(min_length=1, max_length=200, description="The tune's id.")],
    metric: Annotated[str, Query(description=f"What picks the best trial: {', '.join(METRICS)}.")] = "eval_loss",
    mode: Annotated[str | None, Query(description="min or max; default: min for losses, max for exact_match.")] = None,
) -> dict:
    """The tune's trials (the runs that share its tune_id) with their configs, statuses and loss curves, and the
    best completed one."""
    if metric not in METRICS:
        raise InvalidRequest(f"unknown metric {metric!r}; choose among {', '.join(METRICS)}",
                             [{"field": "query.metric", "message": f"one of {', '.join(METRICS)}"}])
    if mode not in (None, "min", "max"):
        raise InvalidRequest(f"mode must be min or max, got {mode!r}", [{"field": "query.mode", "message": "min or max"}])
    found = await reader.run(lambda w: q.tune(w, tune_id, metric, mode or METRICS[metric]))
    if found is None:
        raise NotFound(f"no tune {tune_id!r} in the warehouse; GET /api/tunes lists them",
                       [{"field": "path.tune_id", "message": "unknown tune"}])
    return found
