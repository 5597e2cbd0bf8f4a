"""A run's view of runs.events: what earlier attempts published, and cancel requests while it runs.

Control is event-sourced: ``tracestream runs cancel RUN`` publishes a
``cancel_requested`` event, and the run's driver, which reads its own key on
runs.events from the moment it starts, stops its training and publishes
``cancelled``. A request counts only if it comes after the driver opened the
log, so a rerun of the same run id is not cancelled by a stale request.

Reading what earlier attempts of the same run id published lets a rerun
after a driver crash resume from the checkpoint without publishing a metrics
step or a checkpoint twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from deploy.kafka_clients import KafkaClients
from kafkalog.lag import topic_partitions
from kafkalog.log import read_range, read_to_end
from schemas.codec import AvroCodec
from schemas.contracts import RUN_EVENT
from schemas.errors import TracestreamError

CANCEL_REQUESTED = "cancel_requested"
FINISHED = frozenset({"completed", "failed", "cancelled", "stopped"})
"""Event types that end a run (``stopped``: a tune's scheduler ended a trial early); ``cancel_requested`` does not
(the driver answers it with ``cancelled``)."""
ACTIVE = frozenset({"started", "metrics", "checkpoint", "evaluated"})
"""Event types of a run that is under way."""
STATUSES = ("queued", "running", "cancelling", "completed", "failed", "cancelled", "stopped")


def run_status(terminal: str | None, cancel_requested: bool, active: bool) -> str:
    """The one rule for a run's status, from three facts about its events: the last event in ``FINISHED``
    (if any came), whether a ``cancel_requested`` came, whether an ``ACTIVE`` event came.

    The CLI and the tuner fold the log with it (``status_of_events``); the API computes the three facts in
    SQL from the materialized ``runs`` table (``api.queries.runs``) and applies the same function.
    """
    if terminal:
        return terminal
    if cancel_requested:
        return "cancelling"
    return "running" if active else "queued"


def status_of_events(event_types: Iterable[str]) -> str:
    """``run_status`` of a run's event types in log order."""
    types = list(event_types)
    terminal = next((t for t in reversed(types) if t in FINISHED), None)
    return run_status(terminal, CANCEL_REQUESTED in types, any(t in ACTIVE for t in types))


@dataclass(frozen=True)
class Published:
    """The highest metrics step and checkpoint step earlier attempts of a run published (0: none)."""

    metrics_step: int = 0
    checkpoint_step: int = 0


class RunLogUnavailable(TracestreamError):
    """runs.events cannot be read, so the run cannot know what it already published."""


class RunLog:
    """One consumer on runs.events for one run id: ``open`` reads the past, ``watch`` the future."""

    def __init__(self, kafka: KafkaClients, topic: str, run_id: str, codec: AvroCodec) -> None:
        self.kafka, self.topic, self.run_id, self.codec = kafka, topic, run_id, codec
        self.key = run_id.encode()
        self.consumer: AIOKafkaConsumer | None = None

    async def open(self) -> Published:
        """Read the run's events up to the current end of runs.events; ``watch`` continues from there."""
        for _ in range(20):  # a topic whose leader is moving is described with an error for a moment
            partitions = await topic_partitions(self.kafka, [self.topic])
            if partitions:
                break
            await asyncio.sleep(0.5)
        else:
            # Assuming "nothing published" here would publish a resumed run's steps twice.
            raise RunLogUnavailable(
                f"topic {self.topic} does not exist or has no available partitions; "
                "create the pipeline topics first (`tracestream stack up`, or any command that publishes)"
            )
        self.consumer = await self.kafka.start(self.kafka.consumer(
            enable_auto_commit=False, isolation_level="read_committed", fetch_max_wait_ms=100,
            auto_offset_reset="earliest"))
        self.consumer.assign(partitions)
        starts = await self.consumer.beginning_offsets(partitions)
        ends = await self.consumer.end_offsets(partitions)
        metrics_step = checkpoint_step = 0

        def own_event(record):
            return self.codec.decode_latest(record.value, RUN_EVENT)[0] if record.key == self.key else None

        for tp in partitions:
            async for event in read_range(self.consumer, tp, starts[tp], ends[tp], decode=own_event):
                if event is None:
                    continue
                if event.get("metrics"):
                    metrics_step = max(metrics_step, int(event["metrics"]["step"]))
                if event.get("checkpoint"):
                    checkpoint_step = max(checkpoint_step, int(event["checkpoint"]["step"]))
        self.consumer.assign(partitions)  # the range reader assigned one partition at a time; watch them all
        for tp in partitions:
            self.consumer.seek(tp, ends[tp])
        return Published(metrics_step, checkpoint_step)

    async def watch(self, on_cancel: Callable[[], None]) -> None:
        """Call ``on_cancel()`` when a ``cancel_requested`` event for this run arrives, then return."""
        assert self.consumer is not None, "call open() first"
        await _next_cancel(self.consumer, self.codec, self.key)
        on_cancel()

    async def open_at_end(self) -> None:
        """Start reading every run's events from the current end (``watch_all``), skipping the past."""
        partitions = await topic_partitions(self.kafka, [self.topic])
        if not partitions:
            raise RunLogUnavailable(f"topic {self.topic} does not exist or has no available partitions")
        self.consumer = await self.kafka.start(self.kafka.consumer(
            enable_auto_commit=False, isolation_level="read_committed", fetch_max_wait_ms=100))
        self.consumer.assign(partitions)
        for tp, end in (await self.consumer.end_offsets(partitions)).items():
            self.consumer.seek(tp, end)

    async def watch_all(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first ``cancel_requested`` event of any run that ``match(event)`` accepts (a tune's trials)."""
        assert self.consumer is not None, "call open_at_end() first"
        return await _next_cancel(self.consumer, self.codec, None, match)

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


async def _next_cancel(consumer: AIOKafkaConsumer, codec: AvroCodec, key: bytes | None,
                       match: Callable[[dict[str, Any]], bool] = lambda event: True) -> dict[str, Any]:
    """Poll until a ``cancel_requested`` event (of run ``key``, or any run) that ``match`` accepts arrives."""
    while True:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                if key is not None and record.key != key:
                    continue  # another run's: not even decoded
                event, _ = codec.decode_latest(record.value, RUN_EVENT)
                if event["event_type"] == CANCEL_REQUESTED and match(event):
                    return event


class UnknownRun(TracestreamError):
    """No event of that run id is on runs.events."""


async def run_histories(kafka: KafkaClients, topic: str, codec: AvroCodec) -> dict[str, list[dict[str, Any]]]:
    """Every run on ``topic`` with its events in log order (runs.events is read from its beginning)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for event in await read_to_end(kafka, topic, lambda record: codec.decode_latest(record.value, RUN_EVENT)[0]):
        runs.setdefault(event["run_id"], []).append(event)
    return runs


class RunAlreadyFinished(TracestreamError):
    """The run already ended (completed, failed or cancelled); there is nothing to cancel."""


async def request_cancel(kafka: KafkaClients, topic: str, run_id: str, codec: AvroCodec, *,
                         reason: str | None = None, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Publish ``cancel_requested`` for ``run_id``, naming the same dataset and config as its other events.

    Returns the event published. The run's driver answers with ``cancelled``.
    ``reason`` goes in the event's ``error`` (``tracestream tune cancel`` names
    the tune there); ``events``: the run's events when the caller has read them.

    Raises:
        UnknownRun: the run has no event on ``topic``.
        RunAlreadyFinished: its latest event is completed, failed or cancelled.
    """
    if events is None:
        events = (await run_histories(kafka, topic, codec)).get(run_id)
    if not events:
        raise UnknownRun(f"no run {run_id!r} on {topic}; `tracestream runs list` shows the runs")
    last = events[-1]
    if last["event_type"] in FINISHED:
        raise RunAlreadyFinished(
            f"run {run_id} already ended: {last['event_type']} at {last['at'].isoformat()}; nothing to cancel"
        )
    event = {**last, "event_type": CANCEL_REQUESTED, "at": datetime.now(UTC), "metrics": None, "checkpoint": None,
             "scorecard": None, "error": reason}
    producer = await kafka.start(kafka.producer(acks="all", enable_idempotence=True))
    try:
        await producer.send_and_wait(topic, codec.encode(event, RUN_EVENT), key=run_id.encode())
    finally:
        await producer.stop()
    return event
