"""`tracestream trainer --policy FILE`: train on every ready dataset the policy names."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.common import (
    command_line,
    configure_logging,
    console,
    load_settings,
    require_kafka,
)
from deploy.running import registered
from schemas.errors import TracestreamError
from streams.topics import ensure_pipeline_topics
from trainer.policy import load_policy

if TYPE_CHECKING:
    from trainer.service import TrainerService


async def _serve(service: TrainerService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await ensure_pipeline_topics(service.settings, service.kafka)
    await service.run(stop)


def trainer(
    policy: Path = typer.Option(..., "--policy", help='JSON: {"rules": [{"dataset": "PATTERN", "config": {...}, '
                                                      '"workers": N}]}; the first matching rule wins.'),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO."),
) -> None:
    """Consume datasets.events and start one training run per ready dataset that the policy matches."""
    from trainer.service import (  # JAX and Ray: slow imports, only for this command
        TrainerService,
        trainer_group,
    )

    configure_logging(verbose)
    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        rules = load_policy(policy)
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"trainer: group {trainer_group(settings)} on {settings.topics.datasets}, "
                  f"{len(rules.rules)} policy rule(s); Ctrl-C stops it (and cancels the run in progress); "
                  f"from another shell `{command_line(settings, 'stack', 'stop', str(os.getpid()))}`", highlight=False,
                  soft_wrap=True)
    with registered(settings, "trainer", detail=f"policy {policy}, group {trainer_group(settings)}"):
        asyncio.run(_serve(TrainerService(settings, kafka, rules)))


__all__ = ["trainer"]
