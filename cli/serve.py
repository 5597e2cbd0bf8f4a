"""`tracestream serve`: the processors and the read API in one process (it owns the embedded warehouse)."""

from __future__ import annotations

import typer

from cli.common import (
    configure_logging,
    console,
    load_settings,
    require_kafka,
    say_how_to_stop,
)
from cli.worker import run_processors
from deploy.running import registered
from deploy.stack import kafka_clients
from kafkalog.groups import STAGES
from streams.processes import default_validate_processes


def serve(
    api_only: bool = typer.Option(
        False, "--api-only",
        help="Serve only the API (no processors). Meant for TRACESTREAM_CLICKHOUSE_URL (a ClickHouse server); "
        "with the embedded warehouse no other process may hold its folder.",
    ),
    validate_processes: int = typer.Option(
        default_validate_processes(), "--validate-processes", min=0,
        help="Run validate in this many processes of its own (default: one per core beyond the first); "
        "0 runs it in this process.",
    ),
    host: str = typer.Option(None, "--host", help="Interface the API listens on (default TRACESTREAM_API_HOST)."),
    port: int = typer.Option(None, "--port", min=1, max=65535,
                             help="Port of the API (default TRACESTREAM_API_PORT, 8080)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO."),
) -> None:
    """Run validate + materialize and the API (http://API_HOST:API_PORT) together, sharing one warehouse."""
    from api.server import ApiService, run_api_only
    from streams.processes import ValidateProcesses

    configure_logging(verbose)
    settings = load_settings()
    chosen = {name: value for name, value in (("api_host", host), ("api_port", port)) if value is not None}
    if chosen:
        settings = settings.model_copy(update=chosen)
    api = f"http://{settings.api_host}:{settings.api_port}"
    if api_only:
        kafka = kafka_clients(settings)
        if kafka is None:
            console.print("[yellow]warning:[/yellow] no Kafka broker: reads work, the ingest door answers 503")
        console.print(f"API on {api} (docs: /docs)")
        with registered(settings, "serve", ports={"api": settings.api_port}, urls=[api, f"{api}/docs"],
                        detail="API only", holds=() if settings.clickhouse_url else ("warehouse",)):
            say_how_to_stop(settings, "serve")
            run_api_only(settings, kafka)
        return
    kafka = require_kafka(settings)
    console.print(f"processors + API on {api} (docs: /docs)")

    def services(processors):
        children = [ValidateProcesses(settings, validate_processes, log_dir=settings.home / "logs", verbose=verbose)]
        return [*(children if validate_processes else []), ApiService(settings, kafka)]

    with registered(settings, "serve", ports={"api": settings.api_port, "web": settings.web_port},
                    urls=[api, f"{api}/docs"], detail=f"processors + API, app {settings.app_id}",
                    holds=() if settings.clickhouse_url else ("warehouse",)):
        say_how_to_stop(settings, "serve")
        run_processors(settings, kafka, stages=("materialize",) if validate_processes else STAGES,
                       loglevel="info" if verbose else "warning", services=services)
