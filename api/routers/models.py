"""GET /api/models and /api/models/{name}: the model registry, its stages, lineage and gate results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Readable, ReaderDep
from api.errors import ERROR_SCHEMA, NotFound
from api.queries import models as q

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[Readable])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 404, 422)}


class ModelSummary(BaseModel):
    """A model name: its latest version and which version holds each stage."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "name": "arith", "latest_version": 3, "versions": 3, "stages": {"production": 2, "staging": 3},
        "updated_at": "2026-11-30T12:00:00.000+00:00"}})

    name: str
    latest_version: int | None
    versions: int = Field(description="How many versions were registered.")
    stages: dict[str, int] = Field(description="Stage → the version holding it.")
    updated_at: str | None


class ModelDetail(ModelSummary):
    """A model with every version (newest first): run, dataset lineage down to offsets, artifacts, scorecard,
    promotions and gate results."""

    versions_detail: list[dict[str, Any]]


@router.get("", response_model=list[ModelSummary], responses=_ERRORS, summary="Registered models")
async def list_models(reader: ReaderDep) -> list[dict]:
    """Every model name with its latest version and the version in each stage."""
    return await reader.run(q.summaries)


@router.get("/{name}", response_model=ModelDetail, responses=_ERRORS, summary="A model's versions and lineage")
async def get_model(
    reader: ReaderDep,
    name: Annotated[str, Path(min_length=1, max_length=200, description="The model name.")],
) -> dict:
    """Versions, stages, lineage (run → dataset → offset ranges → trace count) and gate results."""
    found = await reader.run(lambda w: q.detail(w, name))
    if found is None:
        raise NotFound(f"no model {name!r} in the warehouse; GET /api/models lists them",
                       [{"field": "path.name", "message": "unknown model"}])
    return found
