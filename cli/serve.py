"""`tracestream serve`: the processors and the read API in one process (it owns the embedded warehouse)."""

from __future__ import annotations

import typer

from cli.common import configure_logging, console, load_settings, require_bootstrap
from deploy.stack import kafka_bootstrap


def serve(
    api_only: bool = typer.Option(
        False, "--api-only",
        help="Serve only the API (no processors). Meant for TRACESTREAM_CLICKHOUSE_URL (a ClickHouse server); "
        "with the embedded warehouse no other process may hold its folder.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO."),
) -> None:
    """Run validate + materialize and the API (http://API_HOST:API_PORT) together, sharing one warehouse."""
    from api.server import ApiService, run_api_only
    from streams.worker import run_worker

    configure_logging(verbose)
    settings = load_settings()
    if api_only:
        bootstrap = kafka_bootstrap(settings)
        if bootstrap is None:
            console.print("[yellow]warning:[/yellow] no Kafka broker: reads work, the ingest door answers 503")
        console.print(f"API on http://{settings.api_host}:{settings.api_port} (docs: /docs)")
        run_api_only(settings, bootstrap)
        return
    bootstrap = require_bootstrap(settings)
    console.print(f"processors + API on http://{settings.api_host}:{settings.api_port} (docs: /docs)")
    run_worker(settings, bootstrap, loglevel="info" if verbose else "warning",
               services=lambda processors: [ApiService(settings, bootstrap)])
