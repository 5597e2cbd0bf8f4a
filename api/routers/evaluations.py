"""GET /api/evaluations: a leaderboard of runs by their evaluation's primary score."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Readable, ReaderDep
from api.errors import ERROR_SCHEMA
from api.models import Leaderboard
from api.queries import runs as q
from api.routers.runs import dataset_matches

router = APIRouter(prefix="/api/evaluations", tags=["evaluations"], dependencies=[Readable])

PRIMARY = "exact_match"


def _loss(scorecard: dict) -> float:
    loss = scorecard.get("loss")
    return loss if isinstance(loss, (int, float)) else float("inf")


def rank(runs: list[dict]) -> list[dict]:
    """Evaluated runs, best first: higher exact_match, then lower eval loss, then older run."""
    scored = [r for r in runs if r["scorecard"] and isinstance(r["scorecard"].get(PRIMARY), (int, float))]
    scored.sort(key=lambda r: (-r["scorecard"][PRIMARY], _loss(r["scorecard"]), r["started_at"] or "", r["run_id"]))
    return [
        {"rank": n, "run_id": r["run_id"], "dataset": r["dataset"], "score": r["scorecard"][PRIMARY],
         "loss": r["scorecard"].get("loss"), "scorecard": r["scorecard"], "evaluated_at": r["updated_at"]}
        for n, r in enumerate(scored, start=1)
    ]


@router.get("", response_model=Leaderboard, responses={401: {"content": {"application/json": {"schema": ERROR_SCHEMA}}}},
            summary="Runs ranked by evaluation score")
async def leaderboard(
    reader: ReaderDep,
    dataset: Annotated[str | None, Query(description="NAME or NAME@VERSION; default: every dataset.")] = None,
) -> dict:
    """Runs with a scorecard, ranked by exact match on the eval split (ties: lower eval loss first)."""
    runs = await reader.run(q.summaries)
    return {"metric": PRIMARY, "entries": rank([r for r in runs if dataset_matches(r, dataset)])}
