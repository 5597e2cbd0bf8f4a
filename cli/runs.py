"""`tracestream runs list|show|cancel`: training runs, folded from runs.events (the log, not the warehouse).

Cancelling is an event too: `runs cancel` publishes `cancel_requested`, and the
run's driver, which watches runs.events, stops its workers and publishes
`cancelled`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer

from cli.common import (
    AmbiguousId,
    Column,
    UnknownId,
    console,
    fit_table,
    load_settings,
    out,
    require_kafka,
    resolve_id,
)
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from trainer.runlog import request_cancel, run_histories, status_of_events

app = typer.Typer(no_args_is_help=True, help="Training runs and their events.")


async def _runs(kafka: KafkaClients, topic: str) -> dict[str, list[dict[str, Any]]]:
    return await run_histories(kafka, topic, AvroCodec(default_registry()))


def _summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = events[0], events[-1]
    status = status_of_events(e["event_type"] for e in events)
    metrics = [e["metrics"] for e in events if e.get("metrics")]
    scorecard = next((json.loads(e["scorecard"]) for e in reversed(events) if e.get("scorecard")), None)
    return {
        "run_id": first["run_id"], "status": status, "workers": last["workers"],
        "dataset": f"{first['dataset_name']}@{first['dataset_version']}", "dataset_sha256": first["dataset_sha256"],
        "steps": metrics[-1]["step"] if metrics else 0, "loss": metrics[-1]["loss"] if metrics else None,
        "exact_match": scorecard.get("exact_match") if scorecard else None, "error": last.get("error"),
        "started_at": first["at"].isoformat(), "updated_at": last["at"].isoformat(),
    }


@app.command(name="list")
def list_runs(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every run announced on runs.events, with its latest status."""
    settings = load_settings()
    runs = asyncio.run(_runs(require_kafka(settings), settings.topics.runs))
    rows = sorted((_summary(events) for events in runs.values()), key=lambda r: r["started_at"])
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(f"no runs on {settings.topics.runs} yet; `tracestream train DATASET` starts one", highlight=False)
        return
    out.print(fit_table("runs", _COLUMNS, ([_cell(row, c.name) for c in _COLUMNS] for row in rows)))


_COLUMNS = (
    Column("run_id", "id"), Column("status"), Column("dataset", "text"), Column("steps", justify="right"),
    Column("loss", justify="right"), Column("exact_match", justify="right"),
    Column("workers", justify="right", optional=True), Column("updated_at", optional=True),
)


def _cell(row: dict[str, Any], column: str) -> str:
    value = row[column]
    if value is None:
        return ""
    if column == "loss":
        return f"{value:.4f}"
    if column == "exact_match":
        return f"{value:.3f}"
    if column == "updated_at":  # to the minute, in UTC as the log has it
        return f"{value[:16].replace('T', ' ')}Z"
    return str(value)


def resolve_run(settings: Settings, given: str, runs: dict[str, Any]) -> str:
    """The run a full id, a unique prefix or a table's shortened ``head…tail`` names; exit 2 naming why not."""
    try:
        return resolve_id(given, runs, "run")
    except (UnknownId, AmbiguousId) as exc:
        console.print(f"[red]error:[/red] {exc} on {settings.topics.runs}; `tracestream runs list` shows them",
                      highlight=False)
        raise typer.Exit(2) from None


@app.command()
def show(run_id: str = typer.Argument(..., help="The run's id, a unique prefix of it, or its shortened form "
                                              "from `runs list` (head…tail).")) -> None:
    """A run's summary (with its exported adapter and merged model, if any) and every event it published, in order."""
    settings = load_settings()
    runs = asyncio.run(_runs(require_kafka(settings), settings.topics.runs))
    events = runs[resolve_run(settings, run_id, runs)]
    outputs = next((e["outputs"] for e in reversed(events) if e.get("outputs")), None)
    out.print_json(json.dumps({**_summary(events), "outputs": outputs}))
    for event in events:
        detail = (event.get("metrics") or event.get("checkpoint") or event.get("error") or event.get("scorecard")
                  or event.get("outputs") or "")
        out.print(f"{event['at'].isoformat()} {event['event_type']:>10} {detail}")


@app.command()
def cancel(run_id: str = typer.Argument(..., help="The run's id, a unique prefix of it, or its shortened form "
                                                "from `runs list` (head…tail).")) -> None:
    """Ask a running run to stop: publishes cancel_requested; the run answers with cancelled."""
    settings = load_settings()
    kafka = require_kafka(settings)
    run_id = resolve_run(settings, run_id, asyncio.run(_runs(kafka, settings.topics.runs)))
    try:
        asyncio.run(request_cancel(kafka, settings.topics.runs, run_id, AvroCodec(default_registry())))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    out.print(f"cancel requested for run {run_id}; it publishes `cancelled` when its workers have stopped")
