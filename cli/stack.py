"""`tracestream stack up|down|status`: the local broker and warehouse."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import typer

from cli.common import console, load_settings, out, require_kafka
from deploy.kafka import fetch_broker_jars
from deploy.stack import StackStatus, stack_down, stack_status, stack_up
from streams.topics import ensure_pipeline_topics

app = typer.Typer(no_args_is_help=True, help="Start, stop and inspect the local stack.")


def _show(status: StackStatus, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(asdict(status), default=str))
        return
    for key, value in asdict(status).items():
        out.print(f"{key:>16}: {value}")


@app.command()
def up(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Start a real single-node Kafka broker (KRaft) unless TRACESTREAM_KAFKA_BOOTSTRAP is set."""
    console.print("starting the local stack (the first start fetches the broker's jars through Maven)...")
    settings = load_settings()
    status = stack_up(settings)
    asyncio.run(ensure_pipeline_topics(settings, require_kafka(settings)))
    _show(status, as_json)


@app.command()
def fetch() -> None:
    """Fetch the Kafka broker's jars through Maven into the cache (once per version)."""
    settings = load_settings()
    out.print(f"broker jars: {fetch_broker_jars(settings)}")


@app.command()
def down() -> None:
    """Stop the local broker started by `stack up`."""
    stack_down(load_settings())
    console.print("stack stopped")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Where Kafka and ClickHouse are, and whether the local broker runs."""
    _show(stack_status(load_settings()), as_json)
