"""`tracestream demo`: the whole ingest path on the local stack, checked end to end."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import typer
from rich.table import Table

from cli.common import console, load_settings, out, require_bootstrap
from deploy.settings import Settings
from deploy.stack import stack_up
from streams.generator import GeneratedEvent, generate_events, publish_generated
from streams.producer import TraceProducer
from streams.topics import ensure_pipeline_topics


def demo(
    count: int = typer.Option(3000, "--count", "-n", min=1, help="Traces to publish."),
    seed: int = typer.Option(7, "--seed", help="Generator seed."),
    broken_share: float = typer.Option(0.05, "--broken-share", min=0.0, max=1.0, help="Share of broken events."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Give up if not everything is queryable by then."),
) -> None:
    """Start the stack, publish traces (some broken), materialize them, and check every one landed once."""
    base = load_settings()
    console.print("starting the local stack...")
    stack_up(base)
    bootstrap = require_bootstrap(base)
    run = uuid.uuid4().hex[:8]
    settings = base.model_copy(
        update={
            "topic_prefix": f"{base.topic_prefix}demo-{run}.",
            "app_id": f"{base.app_id}-demo-{run}",
            "clickhouse_database": f"demo_{run}",
            "web_port": _free_port(),
        }
    )
    asyncio.run(ensure_pipeline_topics(settings, bootstrap))
    events = list(generate_events(count, seed, broken_share=broken_share))
    expected_reasons = Counter(e.expected_reason for e in events if e.expected_reason)
    expected_valid = count - sum(expected_reasons.values())

    worker = _start_worker(settings, bootstrap)
    try:
        _wait_healthy(settings, worker)
        console.print(f"run {run}: publishing {count} traces to {settings.topics.raw} ...")
        started = time.perf_counter()
        report = asyncio.run(_publish(settings, bootstrap, events))
        published_at = time.perf_counter()
        _wait_accounted(settings, worker, count, timeout_s, committed=False)
        queryable_at = time.perf_counter()
        stats = _wait_accounted(settings, worker, count, timeout_s, committed=True)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()

    got_reasons = Counter()
    for row in stats["dead_letters_by_reason"]:
        got_reasons[row["reason"]] += row["count"]
    checks = {
        "every event delivered to traces.raw": report.delivered == count and report.failed == 0,
        f"{expected_valid} valid traces in ClickHouse": stats["traces"] == expected_valid,
        "no trace id twice": stats["distinct_trace_ids"] == stats["traces"],
        f"{sum(expected_reasons.values())} dead letters, each with its expected reason": got_reasons == expected_reasons,
        "no lag left": all(p["lag"] == 0 for p in stats["lag"]),
    }
    _print_summary(run, settings, count, stats, got_reasons, started, published_at, queryable_at, checks)
    if not all(checks.values()):
        raise typer.Exit(1)


async def _publish(settings: Settings, bootstrap: str, events: list[GeneratedEvent]) -> Any:
    async with TraceProducer(settings, bootstrap) as producer:
        return await publish_generated(producer, events)


def _start_worker(settings: Settings, bootstrap: str) -> subprocess.Popen:
    env = settings.model_copy(update={"kafka_bootstrap": bootstrap}).child_environment()
    log_path = settings.home / "logs" / f"worker-{settings.app_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"worker log: {log_path}")
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker"],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_healthy(settings: Settings, worker: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait until the worker owns every partition of its three topics, so timings exclude start-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise _worker_died(settings, worker)
        try:
            health = httpx.get(f"http://{settings.web_host}:{settings.web_port}/healthz", timeout=2).json()
            if health["assigned_partitions"] >= 3 * settings.partitions:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise typer.Exit(_fail(f"the worker did not answer on port {settings.web_port} within {timeout_s:.0f}s"))


def _wait_accounted(
    settings: Settings, worker: subprocess.Popen, count: int, timeout_s: float, *, committed: bool
) -> dict[str, Any]:
    """Poll /stats until traces + dead letters account for every event (and, if asked, are committed)."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise _worker_died(settings, worker)
        try:
            stats = httpx.get(f"http://{settings.web_host}:{settings.web_port}/stats", timeout=30).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        accounted = stats["traces"] + stats["dead_letters"] >= count
        if accounted and (not committed or all(p["lag"] == 0 for p in stats["lag"])):
            return stats
        time.sleep(0.1)
    console.print(f"[red]timed out after {timeout_s:.0f}s[/red]; last stats: {stats}")
    return stats


def _worker_died(settings: Settings, worker: subprocess.Popen) -> typer.Exit:
    log_path = settings.home / "logs" / f"worker-{settings.app_id}.log"
    tail = log_path.read_text(errors="replace").splitlines()[-30:]
    return typer.Exit(_fail(f"the worker exited with {worker.returncode}; last lines of {log_path}:\n" + "\n".join(tail)))


def _fail(message: str) -> int:
    console.print(f"[red]{message}[/red]")
    return 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _print_summary(
    run: str, settings: Settings, count: int, stats: dict[str, Any], reasons: Counter,
    started: float, published_at: float, queryable_at: float, checks: dict[str, bool],
) -> None:
    table = Table(title=f"tracestream demo {run}", show_header=False)
    table.add_row("published", str(count))
    table.add_row("valid (rows in ClickHouse `traces`)", str(stats.get("traces")))
    table.add_row("dead-lettered (rows in `dlq`)", str(stats.get("dead_letters")))
    for reason, n in sorted(reasons.items()):
        table.add_row(f"  {reason}", str(n))
    total = queryable_at - started
    table.add_row("publish time", f"{published_at - started:.2f} s")
    table.add_row("first publish → all queryable", f"{total:.2f} s ({count / total:,.0f} traces/s end to end)")
    table.add_row("last publish → all queryable", f"{queryable_at - published_at:.2f} s")
    table.add_row("topics", f"{settings.topics.raw}, {settings.topics.valid}, {settings.topics.dlq}")
    table.add_row("ClickHouse database", settings.clickhouse_database)
    out.print(table)
    for check, ok in checks.items():
        out.print(f"{'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {check}")
