"""`tracestream worker` and `tracestream stats`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import typer

from cli.common import (
    configure_logging,
    console,
    lag_table,
    load_settings,
    out,
    records_table,
    require_kafka,
    say_how_to_stop,
)
from deploy.kafka_clients import KafkaClients
from deploy.running import registered
from deploy.settings import Settings
from kafkalog.groups import STAGES
from streams.rebuild import drop_and_recreate_tables, rewind_materializer
from streams.stage import StageFailed
from streams.stats import lag_stats, warehouse_stats
from streams.worker import run_worker
from warehouse.client import Warehouse


def worker(
    stages: str = typer.Option(
        "all", "--stages",
        help="validate, materialize or all. Validate needs only Kafka: run any number of validate workers, on any "
        "machines; materialize owns the warehouse (one process per embedded chDB folder).",
    ),
    until_caught_up: bool = typer.Option(
        False, "--until-caught-up", help="Exit once every stage it runs has committed what the log held at start."
    ),
    web: bool = typer.Option(True, "--web/--no-web", help="Serve /stats and /healthz on TRACESTREAM_WEB_PORT."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO."),
) -> None:
    """Run the processors: validate (exactly once, in Kafka transactions) and materialize (and the /stats endpoint)."""
    configure_logging(verbose)
    settings = load_settings()
    chosen = parse_stages(stages)
    kafka = require_kafka(settings)
    where = f"http://{settings.web_host}:{settings.web_port}"
    with registered(settings, "worker", ports={"web": settings.web_port} if web else {},
                    urls=[f"{where}/stats"] if web else [], detail=f"stages {','.join(chosen)}, app {settings.app_id}",
                    holds=("warehouse",) if "materialize" in chosen and not settings.clickhouse_url else ()):
        if not until_caught_up:
            say_how_to_stop(settings, "worker")
        run_processors(settings, kafka, stages=chosen, until_caught_up=until_caught_up, web=web,
                       loglevel="info" if verbose else "warning")


def parse_stages(stages: str) -> tuple[str, ...]:
    if stages == "all":
        return STAGES
    if stages in STAGES:
        return (stages,)
    console.print(f"[red]error:[/red] --stages {stages!r}: use validate, materialize or all")
    raise typer.Exit(2)


def run_processors(settings: Settings, kafka: KafkaClients, **options: Any) -> None:
    """run_worker, with a stage that could not recover reported as one clear line and exit code 1."""
    try:
        run_worker(settings, kafka, **options)
    except StageFailed as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def rebuild(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO.")) -> None:
    """Drop the ClickHouse tables and rebuild them by replaying the topics through the materializer."""
    configure_logging(verbose)
    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        httpx.get(f"http://{settings.web_host}:{settings.web_port}/healthz", timeout=2)
        console.print(f"[red]error:[/red] a worker answers on port {settings.web_port}; stop it first "
                      "(a running materializer would keep committing its own offsets)")
        raise typer.Exit(2)
    except httpx.ConnectError:
        pass
    drop_and_recreate_tables(Warehouse.connect(settings))
    moved = asyncio.run(rewind_materializer(settings, kafka))
    console.print(f"tables dropped; {moved} partitions rewound to the log start; replaying ...")
    run_processors(settings, kafka, until_caught_up=True, loglevel="info" if verbose else "warning")
    console.print("rebuilt")


def fetch_stats(settings: Settings, kafka: KafkaClients) -> dict[str, Any]:
    """Stats from the running worker if there is one (it owns an embedded warehouse), else directly."""
    try:
        response = httpx.get(f"http://{settings.web_host}:{settings.web_port}/stats", timeout=10)
        response.raise_for_status()
        return response.json()
    except httpx.ConnectError:
        pass
    body = warehouse_stats(Warehouse.connect(settings))
    body["lag"] = asyncio.run(lag_stats(settings, kafka))
    return body


def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """What the warehouse holds: traces by source and version, dead letters by reason, lag."""
    settings = load_settings()
    body = fetch_stats(settings, require_kafka(settings))
    if as_json:
        out.print_json(json.dumps(body))
        return
    out.print(f"warehouse {body['warehouse']}: {body['traces']} traces, {body['dead_letters']} dead letters")
    out.print(records_table("traces", ["source", "trace_version", "schema_version", "count"], body["traces_by_source"]))
    out.print(records_table("dead letters", ["stage", "reason", "count"], body["dead_letters_by_reason"]))
    out.print(lag_table(body["lag"]))
