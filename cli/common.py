"""What every command needs: the settings, the Kafka clients, a console."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from deploy.stack import kafka_clients
from schemas.errors import ConfigurationError

console = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    return Settings()


def require_kafka(settings: Settings) -> KafkaClients:
    """The clients for the configured cluster or the running local broker, with the settings' security."""
    try:
        kafka = kafka_clients(settings)
    except ConfigurationError as exc:  # e.g. SASL_SSL without a mechanism: say which setting, exit 2
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if kafka is None:
        console.print(
            "[red]No Kafka broker.[/red] Start the local stack with `tracestream stack up`, "
            "or point TRACESTREAM_KAFKA_BOOTSTRAP at your cluster (host:port)."
        )
        raise typer.Exit(2)
    return kafka


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # a library may have configured the root logger while being imported
    )
