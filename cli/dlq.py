"""`tracestream dlq replay`: send dead letters back through validate once their cause is fixed.

Deploy the fix first (the producer's schema version, a raised limit), then
replay: each dead letter's original bytes go to traces.raw with a header
naming the dead letter (``tracestream-replayed-from: traces.dlq/2/1234``).
A dead letter already replayed is skipped unless ``--again``; when every one
asked for was, the command says so and exits 1.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import typer

from cli.common import Column, console, fit_table, load_settings, out, require_kafka
from schemas.errors import TracestreamError
from schemas.validation import Reason
from streams.dlq_replay import replay as replay_dead_letters

app = typer.Typer(no_args_is_help=True, help="Dead letters: replay them after a fix.")


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        console.print(f"[red]error:[/red] --since {text!r} is not an ISO 8601 instant, e.g. 2026-11-22T05:00:00Z")
        raise typer.Exit(2) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@app.command()
def replay(
    reason: list[str] = typer.Option([], "--reason", help="Only dead letters with this reason (repeatable)."),
    since: str = typer.Option(None, "--since", help="Only dead letters that failed at or after this ISO instant."),
    again: bool = typer.Option(False, "--again", help="Replay also dead letters replayed before."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be replayed; publish nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Republish dead letters' original bytes to traces.raw, each dead letter once (unless --again)."""
    unknown = sorted(set(reason) - {r.value for r in Reason})
    if unknown:
        console.print(f"[red]error:[/red] --reason {', '.join(unknown)}: not a dead-letter reason; "
                      f"use one of {', '.join(r.value for r in Reason)}")
        raise typer.Exit(2)
    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        report = asyncio.run(replay_dead_letters(settings, kafka, reasons=frozenset(reason), since=_instant(since),
                                                 again=again, dry_run=dry_run))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    summary = report.as_dict()
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        rows = [[name, str(counts["replayed"]), str(counts["already_replayed"])]
                for name, counts in summary["by_reason"].items()]
        rows.append(["all", str(summary["replayed"]), str(summary["already_replayed"])])
        columns = (Column("reason", "text"), Column("replayed", justify="right"),
                   Column("already replayed", justify="right"))
        out.print(fit_table(f"dead letters {'that would be ' if dry_run else ''}replayed to {settings.topics.raw}",
                            columns, rows))
    if report.undecodable:
        console.print(f"{len(report.undecodable)} records on {settings.topics.dlq} are not dead letters and were "
                      f"left alone (first: {report.undecodable[0]})")
    if report.refused:
        console.print(f"[yellow]refused:[/yellow] all {summary['already_replayed']} dead letters asked for were "
                      "replayed before; --again replays them again")
        raise typer.Exit(1)
