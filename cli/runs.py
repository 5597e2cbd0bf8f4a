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
from rich.table import Table

from cli.common import console, load_settings, out, require_kafka
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from trainer.runlog import CANCEL_REQUESTED, request_cancel, run_histories

app = typer.Typer(no_args_is_help=True, help="Training runs and their events.")


async def _runs(kafka: KafkaClients, topic: str) -> dict[str, list[dict[str, Any]]]:
    return await run_histories(kafka, topic, AvroCodec(default_registry()))


def _summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = events[0], events[-1]
    status = "cancelling" if last["event_type"] == CANCEL_REQUESTED else last["event_type"]
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
    table = Table(title="runs")
    columns = ("run_id", "status", "dataset", "workers", "steps", "loss", "exact_match", "updated_at")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "" for c in columns))
    out.print(table)


@app.command()
def show(run_id: str = typer.Argument(..., help="The run's id.")) -> None:
    """A run's summary (with its exported adapter and merged model, if any) and every event it published, in order."""
    settings = load_settings()
    runs = asyncio.run(_runs(require_kafka(settings), settings.topics.runs))
    if run_id not in runs:
        console.print(f"[red]error:[/red] no run {run_id} on {settings.topics.runs}; `tracestream runs list` shows them")
        raise typer.Exit(2)
    events = runs[run_id]
    outputs = next((e["outputs"] for e in reversed(events) if e.get("outputs")), None)
    out.print_json(json.dumps({**_summary(events), "outputs": outputs}))
    for event in events:
        detail = (event.get("metrics") or event.get("checkpoint") or event.get("error") or event.get("scorecard")
                  or event.get("outputs") or "")
        out.print(f"{event['at'].isoformat()} {event['event_type']:>10} {detail}")


@app.command()
def cancel(run_id: str = typer.Argument(..., help="The run's id.")) -> None:
    """Ask a running run to stop: publishes cancel_requested; the run answers with cancelled."""
    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        asyncio.run(request_cancel(kafka, settings.topics.runs, run_id, AvroCodec(default_registry())))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    out.print(f"cancel requested for run {run_id}; it publishes `cancelled` when its workers have stopped")
