"""`tracestream generate` and `tracestream publish`."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from cli.common import console, load_settings, out, require_bootstrap
from streams.generator import TRACE_KINDS, generate_events, write_jsonl
from streams.jsonl import publish_jsonl
from streams.producer import TraceProducer
from streams.topics import ensure_pipeline_topics


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
    """Publish traces from a JSON Lines file to traces.raw; bad lines are reported and skipped."""
    settings = load_settings()
    bootstrap = require_bootstrap(settings)
    total = sum(1 for _ in path.open("rb"))

    async def run() -> object:
        await ensure_pipeline_topics(settings, bootstrap)
        with Progress(
            TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("publish", total=total)
            async with TraceProducer(settings, bootstrap) as producer:
                return await publish_jsonl(
                    path,
                    producer,
                    now=lambda: datetime.now(timezone.utc),
                    on_progress=lambda line_no: progress.update(task, completed=line_no),
                )

    summary = asyncio.run(run())
    for error in summary.rejected:
        console.print(f"[yellow]skipped[/yellow] {path}:{error.line_no} ({error.reason}): {error.message}")
    out.print(
        f"{summary.published} published, {summary.delivered} delivered, {len(summary.rejected)} lines rejected, "
        f"{summary.failed} failed deliveries, {summary.lines} lines in {summary.seconds:.2f}s"
    )
    if summary.failed:
        raise typer.Exit(1)
