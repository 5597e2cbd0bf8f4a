"""`tracestream demo`: the main job on the local stack, checked end to end.

Traces are published (some broken) into `tracestream serve` (processors + read
API), a dataset is snapshotted from the log, its ready event makes a running
`tracestream trainer` train on it, and the API serves the run's loss curve.

It leaves the machine as it found it: whatever it started (the broker, serve,
trainer) is stopped when it ends, passing, failing or interrupted (Ctrl-C,
SIGTERM), unless ``--keep``; a broker that already ran is used and left running.
Its children run in sessions of their own, so a Ctrl-C reaches the demo alone
and the demo decides what stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.table import Table

from cli.common import command_line, console, load_settings, out, require_kafka
from dataset.manifest import Manifest
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.kafka_broker import LocalKafkaBroker
from deploy.kafka_clients import KafkaClients
from deploy.running import registered, running_processes
from deploy.settings import Settings
from deploy.stack import stack_status, stack_up
from devtools.base import GeneratedEvent
from devtools.generator import generate_events
from devtools.output import publish_generated
from ingest.producer import TraceProducer
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.processes import die_with_parent
from streams.topics import ensure_pipeline_topics

# The demo's policy: its dataset trains the tiny model briefly (a real run, not a meaningful score;
# `python -m bench.training_quality` trains one that is).
DEMO_STEPS = 30


def demo(
    count: int = typer.Option(3000, "--count", "-n", min=1, help="Traces to publish."),
    seed: int = typer.Option(7, "--seed", help="Generator seed."),
    broken_share: float = typer.Option(0.05, "--broken-share", min=0.0, max=1.0, help="Share of broken events."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Give up if a stage has not finished by then."),
    keep: bool = typer.Option(False, "--keep", help="Leave the broker, serve and trainer it started running "
                              "(it prints where they are and the command that stops them)."),
) -> None:
    """Start the stack, publish traces, materialize them, snapshot a dataset, train on it, and check each step.

    Everything it started is stopped when it ends (pass, fail or Ctrl-C) unless --keep is given.
    """
    base = load_settings()
    _refuse_owned_warehouse(base)
    broker_ran = bool(base.kafka_bootstrap) or stack_status(base).kafka_pid is not None
    started: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or `stack stop demo`: clean up as for Ctrl-C
    # Ctrl-C raises KeyboardInterrupt wherever the demo is, also inside asyncio.run: asyncio's own handler only
    # cancels the running task, and a task that handles its cancellation would let the demo carry on.
    signal.signal(signal.SIGINT, _interrupt)
    with registered(base, "demo", detail="tracestream demo" + (" --keep" if keep else "")):
        lifetime = "--keep: what it starts keeps running afterwards" if keep else \
            "Ctrl-C stops it and everything it started"
        console.print(f"{lifetime}; `{command_line(base, 'stack', 'status')}` lists what runs", highlight=False,
                      soft_wrap=True)
        run, settings = _demo_settings(base)
        result: tuple[dict[str, bool], str | None] | None = None
        try:
            result = _run(base, run, settings, started, count, seed, broken_share, timeout_s, keep)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
        finally:
            if keep:  # passed, failed or interrupted: say what is left and how to stop it
                _print_kept(base, settings, started, broker_ran, result[1] if result else None)
            else:
                _stop_started(base, started, stop_broker=not broker_ran)
    if result is None:
        raise typer.Exit(130)
    if not all(result[0].values()):
        raise typer.Exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _refuse_owned_warehouse(settings: Settings) -> None:
    """The demo's serve opens the embedded warehouse folder, which one process may hold at a time."""
    if settings.clickhouse_url:
        return
    owners = [p for p in running_processes(settings)[0] if "warehouse" in p.holds]
    if owners:
        console.print(f"[red]error:[/red] {', '.join(p.describe() for p in owners)} holds the embedded warehouse of "
                      f"{settings.home}, which the demo's serve needs; stop it first "
                      f"(`{command_line(settings, 'stack', 'stop', *(str(p.pid) for p in owners))}`) "
                      "or run the demo with another TRACESTREAM_HOME", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _demo_settings(base: Settings) -> tuple[str, Settings]:
    """A name for this demo, and its own topics, groups, database and ports, so demos never see each other's data."""
    run = uuid.uuid4().hex[:8]
    return run, base.model_copy(
        update={
            "topic_prefix": f"{base.topic_prefix}demo-{run}.",
            "app_id": f"{base.app_id}-demo-{run}",
            "clickhouse_database": f"demo_{run}",
            "web_port": _free_port(),
            "api_port": _free_port(),
        }
    )


def _run(base: Settings, run: str, settings: Settings, started: list[subprocess.Popen], count: int, seed: int,
         broken_share: float, timeout_s: float, keep: bool) -> tuple[dict[str, bool], str | None]:
    """The demo itself; each process it starts is appended to ``started`` as soon as it exists."""
    console.print("starting the local stack...")
    stack_up(base)
    kafka = require_kafka(base)
    asyncio.run(ensure_pipeline_topics(settings, kafka))
    events = list(generate_events(count, seed, broken_share=broken_share))
    expected_reasons = Counter(e.expected_reason for e in events if e.expected_reason)
    expected_valid = count - sum(expected_reasons.values())

    name = f"demo-{run}"
    policy = settings.home / "logs" / f"policy-{run}.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps({"rules": [{"dataset": "demo-*", "config": {
        "preset": "tiny", "train": {"total_steps": DEMO_STEPS, "checkpoint_every": 10}}}]}), encoding="utf-8")
    started.append(worker := _start(settings, kafka, "serve", keep=keep))
    started.append(trainer := _start(settings, kafka, "trainer", "--policy", str(policy), keep=keep))
    _wait_healthy(settings, worker)
    console.print(f"run {run}: publishing {count} traces to {settings.topics.raw} ...")
    began = time.perf_counter()
    report = asyncio.run(_publish(settings, kafka, events))
    published_at = time.perf_counter()
    _wait_accounted(settings, worker, count, timeout_s, committed=False)
    queryable_at = time.perf_counter()
    stats = _wait_accounted(settings, worker, count, timeout_s, committed=True)
    console.print(f"snapshotting dataset {name} and waiting for the trainer to train on it ...")
    manifest = asyncio.run(create_dataset(settings, kafka, DatasetRequest(name, split=Split(eval_share=0.1)),
                                          AvroCodec(default_registry())))
    served = _wait_trained(settings, trainer, name, timeout_s)

    got_reasons = Counter()
    for row in stats["dead_letters_by_reason"]:
        got_reasons[row["reason"]] += row["count"]
    checks = {
        "every event delivered to traces.raw": report.delivered == count and report.failed == 0,
        f"{expected_valid} valid traces in ClickHouse": stats["traces"] == expected_valid,
        "no trace id twice": stats["distinct_trace_ids"] == stats["traces"],
        f"{sum(expected_reasons.values())} dead letters, each with its expected reason": got_reasons == expected_reasons,
        "no lag left": all(p["lag"] == 0 for p in stats["lag"]),
        **_training_checks(manifest, expected_valid, served),
    }
    _print_summary(run, settings, count, stats, got_reasons, began, published_at, queryable_at, checks)
    _print_training(manifest, served)
    return checks, served["run"]["run_id"] if served["run"] else None


def _stop_started(base: Settings, started: list[subprocess.Popen], *, stop_broker: bool) -> None:
    """Stop what the demo started, children first, then the broker if it was not running before."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave half of it running
    broker = LocalKafkaBroker.attach(base) if stop_broker and not base.kafka_bootstrap else None
    names = [f"{_command_of(p)} (pid {p.pid})" for p in started]
    if broker is not None:
        names.append(f"the broker (pid {broker.pid})")
    if names:
        console.print(f"stopping what the demo started: {', '.join(names)} ...", highlight=False)
    for process in started:
        process.terminate()  # serve and trainer stop cleanly on SIGTERM (the trainer cancels a run in progress)
    for process in started:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of its session left behind (validate children)
    if broker is not None:
        broker.stop()
    if names:
        console.print(f"stopped {', '.join(names)}", highlight=False)


def _command_of(process: subprocess.Popen) -> str:
    return str(process.args[3]) if isinstance(process.args, list) and len(process.args) > 3 else "process"


def _print_kept(base: Settings, settings: Settings, started: list[subprocess.Popen], broker_ran: bool,
                run_id: str | None) -> None:
    """With --keep: what still runs, where, and the one command that stops it."""
    started = [p for p in started if p.poll() is None]
    if (broker_ran or stack_status(base).kafka_pid is None) and not started:
        return
    api = f"http://{settings.api_host}:{settings.api_port}"
    out.print("\nstill running (--keep):", highlight=False)
    if not broker_ran:
        state = stack_status(base)
        out.print(f"  broker   pid {state.kafka_pid}  {state.kafka_bootstrap}", highlight=False, soft_wrap=True)
    for process in started:
        where = {"serve": f"dashboard {api}/dashboard  API {api}/docs", "trainer": "trains the next ready demo-* dataset"}
        out.print(f"  {_command_of(process):<8} pid {process.pid}  {where.get(_command_of(process), '')}",
                  highlight=False, soft_wrap=True)
    if run_id:
        out.print(f"  the run in the API: {api}/api/runs/{run_id}", highlight=False, soft_wrap=True)
    pids = [str(p.pid) for p in started]
    stop = command_line(base, "stack", "stop", *pids)
    if not broker_ran:
        stop = command_line(base, "stack", "down")
    out.print(f"stop it all: {stop}", highlight=False, soft_wrap=True)


async def _publish(settings: Settings, kafka: KafkaClients, events: list[GeneratedEvent]) -> Any:
    async with TraceProducer(settings, kafka) as producer:
        return await publish_generated(producer, events)


def _start(settings: Settings, kafka: KafkaClients, command: str, *args: str, keep: bool) -> subprocess.Popen:
    """``tracestream COMMAND`` in a session of its own (Ctrl-C reaches the demo only, which stops it); unless kept,
    it also dies with the demo should the demo itself be killed."""
    env = settings.model_copy(update={"kafka_bootstrap": kafka.bootstrap}).child_environment()
    log_path = _log_path(settings, command)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"{command} log: {log_path}")
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", command, *args],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=None if keep else die_with_parent,
    )


def _log_path(settings: Settings, command: str) -> Path:
    return settings.home / "logs" / f"{command}-{settings.app_id}.log"


def _wait_trained(settings: Settings, trainer: subprocess.Popen, name: str, timeout_s: float) -> dict[str, Any]:
    """Poll the read API until the run the dataset's ready event started has ended and is materialized."""
    api = f"http://{settings.api_host}:{settings.api_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if trainer.poll() is not None:
            raise _died(settings, trainer, "trainer")
        try:
            runs = httpx.get(f"{api}/api/runs", params={"dataset": name}, timeout=10).json()
            ended = [r for r in runs if r["status"] in ("completed", "failed", "cancelled")]
            if ended:
                run_id = ended[0]["run_id"]
                curve = httpx.get(f"{api}/api/runs/{run_id}/metrics", timeout=10).json()["points"]
                if ended[0]["status"] != "completed" or len(curve) == DEMO_STEPS:
                    dataset = httpx.get(f"{api}/api/datasets/{name}", timeout=10).json()
                    return {"runs": runs, "run": ended[0], "curve": curve, "dataset": dataset}
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    console.print(f"[red]no training run of {name} ended within {timeout_s:.0f}s[/red]; "
                  f"see {_log_path(settings, 'trainer')}")
    return {"runs": [], "run": None, "curve": [], "dataset": {}}


def _training_checks(manifest: Manifest, expected_valid: int, served: dict[str, Any]) -> dict[str, bool]:
    run, curve = served["run"], served["curve"]
    versions = served["dataset"].get("versions", [])
    return {
        f"dataset {manifest.name} ready with every valid trace": manifest.record_count == expected_valid,
        "its ready event started exactly one training run, which completed": (
            len(served["runs"]) == 1 and run is not None and run["status"] == "completed"),
        f"the API serves its {DEMO_STEPS}-step loss curve, going down": (
            [p["step"] for p in curve] == list(range(1, DEMO_STEPS + 1)) and curve[-1]["loss"] < curve[0]["loss"]),
        "the API serves the dataset's manifest": (
            any(v["version"] == manifest.version and v["record_count"] == manifest.record_count for v in versions)),
    }


def _wait_healthy(settings: Settings, worker: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait until the worker owns every partition of its three topics, so timings exclude start-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise _died(settings, worker, "serve")
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
            raise _died(settings, worker, "serve")
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


def _died(settings: Settings, process: subprocess.Popen, command: str) -> typer.Exit:
    log_path = _log_path(settings, command)
    tail = log_path.read_text(errors="replace").splitlines()[-30:]
    return typer.Exit(_fail(f"`tracestream {command}` exited with {process.returncode}; "
                            f"last lines of {log_path}:\n" + "\n".join(tail)))


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
    table.add_column()
    table.add_column(overflow="fold")
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


def _print_training(manifest: Manifest, served: dict[str, Any]) -> None:
    run, curve = served["run"], served["curve"]
    if run is None:
        return
    table = Table(title=f"dataset {manifest.name}@{manifest.version} → run {run['run_id']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("records (train / eval)", f"{manifest.record_count} ({manifest.train_count} / {manifest.eval_count})")
    table.add_row("content_sha256", manifest.content_sha256)
    table.add_row("run status", run["status"])
    if curve:
        table.add_row("loss", f"{curve[0]['loss']:.3f} at step 1 → {curve[-1]['loss']:.3f} at step {curve[-1]['step']}")
    out.print(table)
