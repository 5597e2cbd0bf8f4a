"""GET /api/runs, /api/runs/{id}, its metrics (loss curve), and its events live (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import Readable, ReaderDep
from api.errors import ERROR_SCHEMA, InvalidRequest, NotFound
from api.models import RunDetail, RunMetrics, RunSummary
from api.queries import runs as q
from trainer.runlog import FINISHED, STATUSES

router = APIRouter(prefix="/api/runs", tags=["runs"], dependencies=[Readable])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 404, 422)}
_RUN_ID = Path(min_length=1, max_length=200, description="The run's id.")
POLL_S = 0.25
METRICS_WAIT_S = 5.0


def dataset_matches(run: dict, dataset: str | None) -> bool:
    """``dataset`` is NAME or NAME@VERSION."""
    if not dataset:
        return True
    name, _, version = dataset.partition("@")
    return run["dataset"]["name"] == name and (not version or str(run["dataset"]["version"]) == version)


@router.get("", response_model=list[RunSummary], responses=_ERRORS, summary="Training runs")
async def list_runs(
    reader: ReaderDep,
    status: Annotated[list[str], Query(description=f"Keep runs in these states: {', '.join(STATUSES)}.")] = [],  # noqa: B006
    dataset: Annotated[str | None, Query(description="NAME or NAME@VERSION of the dataset trained on.")] = None,
) -> list[dict]:
    """Every run with its status, dataset, latest step and loss, and evaluation score; oldest first."""
    unknown = sorted(set(status) - set(STATUSES))
    if unknown:
        raise InvalidRequest(f"unknown status {', '.join(unknown)}; choose among {', '.join(STATUSES)}",
                             [{"field": "query.status", "message": f"one of {', '.join(STATUSES)}"}])
    runs = await reader.run(q.summaries)
    return [r for r in runs if (not status or r["status"] in status) and dataset_matches(r, dataset)]


async def existing_run(reader: ReaderDep, run_id: Annotated[str, _RUN_ID]) -> dict:
    """The run's summary; 404 before any response starts (an event stream cannot turn into a 404)."""
    found = await reader.run(lambda w: q.summaries(w, run_id))
    if not found:
        raise NotFound(f"no run {run_id!r} in the warehouse; GET /api/runs lists them",
                       [{"field": "path.run_id", "message": "unknown run"}])
    return found[0]


RunDep = Annotated[dict, Depends(existing_run)]


@router.get("/{run_id}", response_model=RunDetail, responses=_ERRORS, summary="One run and its events")
async def get_run(reader: ReaderDep, run: RunDep) -> dict:
    events = await reader.run(lambda w: q.events(w, run["run_id"], with_metrics=False))
    return {"run": run, "events": events}


@router.get("/{run_id}/metrics", response_model=RunMetrics, responses=_ERRORS, summary="A run's loss curve")
async def get_metrics(reader: ReaderDep, run: RunDep) -> dict:
    points = await reader.run(lambda w: q.metrics(w, run["run_id"]))
    return {"run_id": run["run_id"], "points": points}


def _resume_point(last_event_id: str | None) -> tuple[int, int]:
    """Where a reconnecting client left off: its Last-Event-ID is ``partition:offset``."""
    if not last_event_id:
        return (0, -1)
    try:
        partition, offset = (int(x) for x in last_event_id.split(":"))
    except ValueError:
        raise InvalidRequest("Last-Event-ID is not an event id of this stream (partition:offset)",
                             [{"field": "header.last-event-id", "message": "expected partition:offset"}]) from None
    return partition, offset


@router.get("/{run_id}/events", response_class=EventSourceResponse, responses=_ERRORS,
            summary="A run's events as they happen (Server-Sent Events)")
async def stream_events(
    reader: ReaderDep, run: RunDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of the run in order, then new ones as the warehouse gets them; ends after
    completed, failed or cancelled. Each SSE ``event`` is the event type, ``id`` is partition:offset.
    """
    after = _resume_point(last_event_id)
    run_id = run["run_id"]
    incomplete_since: float | None = None
    while True:
        batch = await reader.run(lambda w, after=after: q.events(w, run_id, after=after, limit=1000))
        for event in batch:
            if event["event_type"] == "metrics" and "metrics" not in event:
                # The materializer writes `runs` and `run_metrics` in two inserts: wait for the second
                # (a metrics event that carries none is sent as it is after METRICS_WAIT_S).
                incomplete_since = incomplete_since or time.monotonic()
                if time.monotonic() - incomplete_since < METRICS_WAIT_S:
                    break
            incomplete_since = None
            after = (event["partition"], event["offset"])
            yield ServerSentEvent(data=event, event=event["event_type"], id=f"{after[0]}:{after[1]}")
            if event["event_type"] in FINISHED:
                return
        else:
            if batch:
                continue
        await asyncio.sleep(POLL_S)
