"""What every command needs: the settings, the Kafka bootstrap, a console."""

from __future__ import annotations

import logging
import time

import typer
from rich.console import Console

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import ConfigurationError
from deploy.stack import kafka_bootstrap

console = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    return Settings()


def require_bootstrap(settings: Settings) -> str:
    bootstrap = kafka_bootstrap(settings)
    if bootstrap is None:
        console.print(
            "[red]No Kafka broker.[/red] Start the local stack with `tracestream stack up`, "
            "or point TRACESTREAM_KAFKA_BOOTSTRAP at your cluster (host:port)."
        )
        raise typer.Exit(2)
    return bootstrap


def require_kafka(settings: Settings) -> KafkaClients:
    """The clients for the configured cluster or the running local broker, with the settings' security."""
    bootstrap = require_bootstrap(settings)
    try:
        return KafkaClients.from_settings(settings, bootstrap)
    except ConfigurationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


class QuietRetries(logging.Filter):
    """Let each kind of aiokafka message through once per ``every_s``.

    While a broker is down aiokafka logs the same connection errors on every
    retry, about ten a second; one of each says what is wrong.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key, now = (record.name, record.msg), time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # a library may have configured the root logger while being imported
    )
