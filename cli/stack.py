"""`tracestream stack up|down|status|stop`: the local broker and warehouse, and what this home runs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import typer

from cli.common import (
    Column,
    command_line,
    console,
    fit_table,
    load_settings,
    out,
    require_kafka,
)
from deploy.kafka_jars import fetch_broker_jars
from deploy.settings import Settings
from deploy.stack import (
    NotRunningHere,
    StackStatus,
    stack_down,
    stack_status,
    stack_stop,
    stack_up,
)
from streams.topics import ensure_pipeline_topics

app = typer.Typer(no_args_is_help=True, help="Start, stop and inspect the local stack.")


def _show(settings: Settings, status: StackStatus, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(asdict(status), default=str))
        return
    for key, value in asdict(status).items():
        if key not in ("processes", "stale"):
            out.print(f"{key:>16}: {value}", highlight=False)
    rows = []
    if status.kafka_managed and status.kafka_pid is not None:
        rows.append(["broker", str(status.kafka_pid), status.kafka_bootstrap or "", f"Kafka {status.kafka_version}"])
    for process in status.processes:
        where = ", ".join([*(f"{role} :{port}" for role, port in process.ports.items()), *process.urls[:1]])
        rows.append([process.kind, str(process.pid), where, process.detail])
    if rows:
        columns = (Column("what"), Column("pid", justify="right"), Column("where", "text"), Column("detail", "text"))
        out.print(fit_table(f"running in {settings.home}", columns, rows))
        stop = command_line(settings, "stack", "down") if status.kafka_pid else command_line(settings, "stack", "stop")
        out.print(f"stop them all: {stop}; one: {command_line(settings, 'stack', 'stop', 'PID')}", highlight=False,
                  soft_wrap=True)
    else:
        out.print(f"nothing of {settings.home} runs", highlight=False)
    for process in status.stale:
        out.print(f"not running: {process.describe()} (started {process.started_at}); its stale record was removed",
                  highlight=False)


@app.command()
def up(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Start a real single-node Kafka broker (KRaft) unless TRACESTREAM_KAFKA_BOOTSTRAP is set."""
    console.print("starting the local stack (the first start fetches the broker's jars through Maven)...")
    settings = load_settings()
    status = stack_up(settings)
    asyncio.run(ensure_pipeline_topics(settings, require_kafka(settings)))
    _show(settings, status, as_json)
    if status.kafka_managed:
        console.print(f"the broker keeps running after this command; `{command_line(settings, 'stack', 'down')}` "
                      "stops it", highlight=False, soft_wrap=True)


@app.command()
def fetch() -> None:
    """Fetch the Kafka broker's jars through Maven into the cache (once per version)."""
    settings = load_settings()
    out.print(f"broker jars: {fetch_broker_jars(settings)}")


@app.command()
def down() -> None:
    """Stop what this home runs (serve, workers, trainer, demos), then the local broker `stack up` started."""
    settings = load_settings()
    broker = stack_status(settings).kafka_pid if not settings.kafka_bootstrap else None
    stopped = [p.describe() for p in stack_stop(settings)]
    stack_down(settings)
    if broker is not None:
        stopped.append(f"the broker (pid {broker})")
    console.print(f"stopped {', '.join(stopped) or 'nothing (nothing ran)'}", highlight=False)


@app.command()
def stop(targets: list[str] = typer.Argument(None, help="PIDs or commands (serve, worker, trainer, demo) of this "
                                                        "home; none: all of them (the broker keeps running).")) -> None:
    """Stop processes of this home (SIGTERM, SIGKILL after 30 s); `stack status` lists them."""
    settings = load_settings()
    try:
        stopped = stack_stop(settings, targets or ())
    except NotRunningHere as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"stopped {', '.join(p.describe() for p in stopped) or 'nothing (nothing ran)'}", highlight=False)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Where Kafka and ClickHouse are, and what this home runs (broker, serve, workers, trainer) with pids and ports."""
    settings = load_settings()
    _show(settings, stack_status(settings), as_json)
