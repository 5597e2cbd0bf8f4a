"""Helpers for integration tests: publish, run the worker as a user would, read stats."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from dataset.manifest import Manifest
from dataset.snapshot import DatasetRequest, create_dataset
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.base import GeneratedEvent
from devtools.output import publish_generated
from ingest.producer import DeliveryReport, TraceProducer
from kafkalog.groups import STAGES
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.app import Processors, build_app
from streams.topics import ensure_pipeline_topics
from warehouse.client import Warehouse

REPO = Path(__file__).resolve().parents[2]


def kafka_of(settings: Settings) -> KafkaClients:
    """Clients for a test's settings: its broker, with its security (as every command builds them)."""
    return KafkaClients.from_settings(settings, settings.kafka_bootstrap)


async def publish(settings: Settings, events: Iterable[GeneratedEvent]) -> DeliveryReport:
    await ensure_pipeline_topics(settings, kafka_of(settings))
    async with TraceProducer(settings, kafka_of(settings)) as producer:
        return await publish_generated(producer, events)


def cli(settings: Settings, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=settings.child_environment(), cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
    )


def start_worker(settings: Settings, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", *args],
        env=settings.child_environment(), cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def stats_via_cli(settings: Settings) -> dict[str, Any]:
    done = cli(settings, "stats", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stats_via_worker(settings: Settings) -> dict[str, Any] | None:
    try:
        return httpx.get(f"http://{settings.web_host}:{settings.web_port}/stats", timeout=30).json()
    except httpx.HTTPError:
        return None


def wait_for(predicate, *, timeout_s: float, every_s: float = 0.2, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def expected_outcome(events: Iterable[GeneratedEvent]) -> tuple[int, Counter]:
    """(valid count, dead letters by reason) that the pipeline must produce for ``events``."""
    events = list(events)
    reasons = Counter(e.expected_reason for e in events if e.expected_reason)
    return len(events) - sum(reasons.values()), reasons


def reasons_of(stats: dict[str, Any]) -> Counter:
    got = Counter()
    for row in stats["dead_letters_by_reason"]:
        got[row["reason"]] += row["count"]
    return got


@asynccontextmanager
async def running_processors(
    settings: Settings, warehouse_factory: Callable[[], Warehouse] | None = None, stages: tuple[str, ...] = STAGES,
) -> AsyncIterator[Processors]:
    """The worker's processors, started in this process (which owns the session's chDB folder)."""
    kafka = kafka_of(settings)
    await ensure_pipeline_topics(settings, kafka)
    processors = build_app(settings, kafka, stages=stages, warehouse_factory=warehouse_factory)
    await processors.app.start()
    try:
        yield processors
    finally:
        await processors.app.stop()
        if processors.writer is not None:
            processors.writer.close()


async def wait_for_async(predicate, *, timeout_s: float, every_s: float = 0.1, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@asynccontextmanager
async def api_after_ingest(settings: Settings, events: list[GeneratedEvent], **app_options) -> AsyncIterator[tuple]:
    """Publish ``events``, run the processors until caught up, and serve the API on a free port.

    Yields (settings with that port, the processors, an HTTP client of the API).
    """
    from api.app import create_app
    from api.server import serving
    from streams.catchup import wait_until_caught_up
    from tests.conftest import free_port

    settings = settings.model_copy(update={"api_port": free_port()})
    await publish(settings, events)
    async with running_processors(settings) as processors:
        await wait_until_caught_up(settings, kafka_of(settings))
        app = create_app(settings, **app_options)
        async with serving(app, settings.api_host, settings.api_port) as base_url, \
                httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            yield settings, processors, client


async def dataset_of(settings: Settings, events: Iterable[GeneratedEvent], request: DatasetRequest) -> Manifest:
    """Publish ``events``, wait until the running processors caught up, and snapshot them as ``request`` asks.

    Also creates ``runs.events`` (one partition), which a training run publishes to: the set-up of a run.
    """
    from deploy.kafka_admin import ensure_topics_async
    from streams.catchup import wait_until_caught_up

    await ensure_topics_async(kafka_of(settings), {settings.topics.runs: 1})
    await publish(settings, events)
    await wait_until_caught_up(settings, kafka_of(settings))
    return await create_dataset(settings, kafka_of(settings), request, AvroCodec(default_registry()))
