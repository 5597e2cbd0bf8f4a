"""`tracestream generate` and `tracestream publish`."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import typer
from aiokafka.errors import KafkaError
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from cli.common import console, load_settings, out, require_kafka
from deploy.quiet_logs import QuietRetries
from devtools.generator import TRACE_KINDS, generate_events
from devtools.output import write_jsonl
from ingest.jsonl import publish_jsonl
from ingest.producer import TraceProducer
from schemas.errors import TracestreamError
from streams.topics import ensure_pipeline_topics

SHOWN_LINES = 10
"""How many line numbers of unacknowledged events the summary names."""


def _why(exc: BaseException) -> str:
    """``Type: message``, once (aiokafka's errors already start with their type)."""
    text = str(exc)
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


def _quiet_logging() -> None:
    """Warnings above the progress bar, and no flood of retries while the broker is down."""
    handler = RichHandler(console=console, show_path=False, show_time=False)
    handler.addFilter(QuietRetries())
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", handlers=[handler], force=True)


def generate(
    count: int = typer.Option(1000, "--count", "-n", min=1, help="How many traces to write."),
    seed: int = typer.Option(0, "--seed", "-s", help="Same seed, same file."),
    broken_share: float = typer.Option(0.05, "--broken-share", min=0.0, max=1.0, help="Share of deliberately broken lines."),
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Output JSON Lines file (default: stdout)."),
    kind: str = typer.Option("word", "--kind", help="word: multi-step word problems (~2 KB); arith: short column arithmetic for training (see the arith trainer preset)."),
) -> None:
    """Write realistic arithmetic reasoning traces as JSON Lines, deterministically for a seed."""
    if kind not in TRACE_KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(TRACE_KINDS)}, got {kind!r}")
    events = generate_events(count, seed, broken_share=broken_share, kind=kind)
    if out_file is None:
        write_jsonl(events, sys.stdout)
        return
    with out_file.open("w", encoding="utf-8") as fp:
        write_jsonl(events, fp)
    console.print(f"wrote {out_file}")


def publish(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="JSON Lines file of traces."),
) -> None:
    """Publish traces from a JSON Lines file to traces.raw; bad lines are reported and skipped.

    Exits 1 if any event was not acknowledged by Kafka within
    TRACESTREAM_KAFKA_DELIVERY_TIMEOUT_S, naming how many and their lines.
    """
    _quiet_logging()
    settings = load_settings()
    kafka = require_kafka(settings)
    total = sum(1 for _ in path.open("rb"))

    async def run() -> object:
        await ensure_pipeline_topics(settings, kafka)
        with Progress(
            TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("publish", total=total)
            async with TraceProducer(settings, kafka) as producer:
                return await publish_jsonl(
                    path,
                    producer,
                    now=lambda: datetime.now(timezone.utc),
                    on_progress=lambda line_no: progress.update(task, completed=line_no),
                )

    try:
        summary = asyncio.run(run())
    except (KafkaError, TracestreamError) as exc:  # no broker before the first event: nothing was sent
        console.print(f"[red]nothing published[/red]: {_why(exc)}")
        raise typer.Exit(1) from None
    for error in summary.rejected:
        console.print(f"[yellow]skipped[/yellow] {path}:{error.line_no} ({error.reason}): {error.message}")
    if summary.failed:
        lines = summary.failed_lines()
        shown = ", ".join(map(str, lines[:SHOWN_LINES])) + (f" and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else "")
        reasons = sorted({_why(e.error) for e in summary.delivery_errors})
        console.print(
            f"[red]{summary.failed} events were not acknowledged by Kafka[/red] (they may or may not be in the log; "
            f"lines {shown}): {'; '.join(reasons[:3])}"
        )
    if summary.stopped_at is not None:
        console.print(
            f"[red]publishing stopped at line {summary.stopped_at}[/red] ({summary.stop_reason}); "
            f"lines {summary.stopped_at}-{total} were not sent"
        )
    out.print(
        f"{summary.published} published, {summary.delivered} acknowledged, {summary.failed} not acknowledged, "
        f"{len(summary.rejected)} lines rejected, {summary.lines} lines in {summary.seconds:.2f}s"
    )
    if summary.failed or summary.stopped_at is not None:
        raise typer.Exit(1)
