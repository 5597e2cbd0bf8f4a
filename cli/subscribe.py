"""`tracestream tail` and `tracestream lag`: what a topic carries, and how far a consumer group is behind."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import datetime
from typing import Any

import typer

from cli.common import console, lag_table, load_settings, out, require_kafka
from consumers.records import Record, Undecodable, topic_name
from consumers.subscribe import subscribe
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.lag import known_group_lag
from schemas.errors import TracestreamError
from streams.stats import lag_stats


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def item_json(item: Record | Undecodable) -> str:
    """One JSON line: the coordinates, the headers as text, then the decoded value (or the error and the
    original bytes). Datetimes are ISO 8601, bytes base64."""
    line: dict[str, Any] = {
        "topic": item.topic, "partition": item.partition, "offset": item.offset,
        "timestamp": item.timestamp.isoformat(), "key": item.key,
    }
    if item.headers:
        line["headers"] = {name: value.decode("utf-8", errors="backslashreplace") for name, value in item.headers}
    if isinstance(item, Record):
        line.update(schema=item.schema, schema_version=item.schema_version, value=item.value)
    else:
        line.update(error={"reason": item.reason, "message": item.message}, original=item.original)
    return json.dumps(line, default=_plain, ensure_ascii=False)


async def _tail(settings: Settings, kafka: KafkaClients, topic: str, *, group: str | None, from_beginning: bool,
                since: datetime | None, limit: int | None, timeout_s: float | None) -> int:
    printed = 0
    async with subscribe(settings, topic, group, start="earliest" if from_beginning else "latest", since=since,
                         on_undecodable="yield", idle_timeout_s=timeout_s, kafka=kafka) as records:
        async for item in records:
            sys.stdout.write(item_json(item) + "\n")
            sys.stdout.flush()
            printed += 1
            if limit is not None and printed >= limit:
                break
    return printed


def tail(
    topic: str = typer.Argument(..., help="traces.raw, traces.valid, traces.dlq, datasets.events, runs.events "
                                "(the settings' prefix is added), or a full topic name."),
    from_beginning: bool = typer.Option(False, "--from-beginning",
                                        help="Start at the oldest record (with --group: where the group has no "
                                        "committed offset). Default: only records published from now on."),
    group: str | None = typer.Option(None, "--group", "-g",
                                     help="Read as a member of this consumer group and commit what was printed."),
    since: str | None = typer.Option(None, "--since", help="Start at the first record at or after this instant "
                                     "(ISO 8601 with a timezone, e.g. 2026-11-22T05:00:00Z); with --group, the "
                                     "group's offsets are moved there first."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Stop after this many records."),
    timeout_s: float | None = typer.Option(None, "--timeout", min=0.0,
                                           help="Stop after this many seconds without a new record."),
) -> None:
    """Print a topic's records as JSON lines: coordinates, key, writer schema and version, decoded value.

    An undecodable record is printed with its error and original bytes (base64) instead of stopping.
    """
    settings = load_settings()
    at = _instant(since) if since is not None else None
    kafka = require_kafka(settings)
    try:
        asyncio.run(_tail(settings, kafka, topic, group=group, from_beginning=from_beginning, since=at,
                          limit=limit, timeout_s=timeout_s))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except BrokenPipeError:  # `tracestream tail ... | head`: the reader left; the unshown record is not committed
        sys.stderr.close()


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        console.print(f"[red]error:[/red] --since {text!r} is not an ISO 8601 instant with a timezone; "
                      "write e.g. 2026-11-22T05:00:00Z or 2026-11-22T06:00:00+01:00", highlight=False)
        raise typer.Exit(2)
    return at


async def _lag(settings: Settings, kafka: KafkaClients, group: str | None, topics: list[str]) -> list[dict[str, Any]]:
    if group is None:
        return await lag_stats(settings, kafka)
    lags = await known_group_lag(kafka, group, [topic_name(settings, t) for t in topics] or None)
    return [{**lag._asdict(), "lag": lag.lag} for lag in lags]


def lag(
    group: str | None = typer.Option(None, "--group", "-g",
                                     help="A consumer group. Default: the processors' groups (validate, materialize)."),
    topics: list[str] = typer.Option([], "--topic", "-t",
                                     help="With --group: only these topics (default: those it committed offsets on)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-partition lag: the group's committed offset, the high watermark, and the records in between."""
    settings = load_settings()
    if topics and group is None:
        console.print("[red]error:[/red] --topic needs --group (the processors' groups have their own topics)")
        raise typer.Exit(2)
    kafka = require_kafka(settings)
    try:
        rows = asyncio.run(_lag(settings, kafka, group, topics))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(f"group {group} has committed no offsets yet; name its topics with --topic")
        return
    out.print(lag_table(rows))
