"""Dead-letter replay: republish dead letters' original bytes to traces.raw once their cause is fixed.

A dead letter keeps the event's bytes exactly as received, so after a fix
(the writer's schema deployed, a limit raised) the same bytes can go through
validate again. The log is the source of truth on both sides:

- what to replay is read from traces.dlq (not the warehouse), with the one
  range reader;
- what was replayed already is read from traces.raw itself: every replayed
  event carries ``tracestream-replayed-from: <dlq topic>/<partition>/<offset>``,
  so an event is traceable to its dead letter, and a dead letter whose
  coordinates are on traces.raw is not replayed again unless ``again``.

Only the part of traces.raw written since the oldest selected dead letter
(minus an hour for clock skew between machines) is scanned for that header:
a replay is always written after its dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka.structs import ConsumerRecord

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.log import read_to_end
from schemas.codec import AvroCodec
from schemas.contracts import DEAD_LETTER
from schemas.errors import DecodeError, TracestreamError

REPLAYED_FROM_HEADER = "tracestream-replayed-from"
_CLOCK_SKEW = timedelta(hours=1)


class ReplayFailed(TracestreamError):
    """Kafka did not acknowledge every replayed event; the message says how many."""

    retriable = True


@dataclass(frozen=True)
class DeadLetterAt:
    """One dead letter as read from traces.dlq, with its own coordinates."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    record: dict[str, Any]

    @property
    def coordinates(self) -> str:
        """The ``tracestream-replayed-from`` header value: ``topic/partition/offset``."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass
class ReplayReport:
    """What a replay did, by dead-letter reason."""

    replayed: Counter = field(default_factory=Counter)
    already_replayed: Counter = field(default_factory=Counter)
    """Skipped: an earlier replay of the same dead letter is on traces.raw (``again`` replays them)."""
    undecodable: list[str] = field(default_factory=list)
    """Coordinates of records on traces.dlq that are not DeadLetters (kept there, never replayed)."""
    dry_run: bool = False

    @property
    def refused(self) -> bool:
        """Every dead letter asked for was replayed before: nothing was done."""
        return not self.replayed and bool(self.already_replayed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": sum(self.replayed.values()), "already_replayed": sum(self.already_replayed.values()),
            "undecodable": len(self.undecodable), "dry_run": self.dry_run,
            "by_reason": {reason: {"replayed": self.replayed[reason], "already_replayed": self.already_replayed[reason]}
                          for reason in sorted(self.replayed.keys() | self.already_replayed.keys())},
        }


async def dead_letters(kafka: KafkaClients, topic: str, codec: AvroCodec) -> tuple[list[DeadLetterAt], list[str]]:
    """Every dead letter on ``topic`` in (partition, offset) order, and the coordinates of undecodable records."""
    undecodable: list[str] = []

    def decode(record: ConsumerRecord) -> DeadLetterAt | None:
        try:
            value, _ = codec.decode_latest(record.value or b"", DEAD_LETTER)
        except DecodeError:
            undecodable.append(f"{record.topic}/{record.partition}/{record.offset}")
            return None
        return DeadLetterAt(record.topic, record.partition, record.offset, record.timestamp, value)

    letters = [d for d in await read_to_end(kafka, topic, decode) if d is not None]
    return letters, undecodable


async def replayed_coordinates(kafka: KafkaClients, raw_topic: str, since_ms: int | None) -> set[str]:
    """Dead-letter coordinates named by ``tracestream-replayed-from`` on ``raw_topic`` (from ``since_ms``)."""

    def header(record: ConsumerRecord) -> str | None:
        for name, value in record.headers or ():
            if name == REPLAYED_FROM_HEADER:
                return value.decode()
        return None

    return {c for c in await read_to_end(kafka, raw_topic, header, since_ms=since_ms) if c is not None}


def _selected(letter: DeadLetterAt, reasons: frozenset[str], since: datetime | None) -> bool:
    record = letter.record
    return (not reasons or record["reason"] in reasons) and (since is None or record["failed_at"] >= since)


async def replay(
    settings: Settings,
    kafka: KafkaClients,
    *,
    reasons: frozenset[str] = frozenset(),
    since: datetime | None = None,
    again: bool = False,
    dry_run: bool = False,
    codec: AvroCodec | None = None,
) -> ReplayReport:
    """Republish the selected dead letters' original bytes to traces.raw, each once unless ``again``.

    Args:
        reasons: replay only dead letters with one of these reasons (empty: any).
        since: only dead letters that failed at or after this aware instant.
        again: replay also dead letters replayed before.
        dry_run: count what would be replayed; publish nothing.

    Raises:
        ReplayFailed: Kafka did not acknowledge every event within ``kafka_delivery_timeout_s``.
    """
    if codec is None:
        from schemas.registry import default_registry

        codec = AvroCodec(default_registry())
    topics = settings.topics
    letters, undecodable = await dead_letters(kafka, topics.dlq, codec)
    chosen = [d for d in letters if _selected(d, reasons, since)]
    report = ReplayReport(undecodable=undecodable, dry_run=dry_run)
    if not chosen:
        return report
    done: set[str] = set()
    if not again:
        oldest = min(d.timestamp_ms for d in chosen) - int(_CLOCK_SKEW.total_seconds() * 1000)
        done = await replayed_coordinates(kafka, topics.raw, max(oldest, 0))
    todo = []
    for letter in chosen:
        reason = letter.record["reason"]
        if letter.coordinates in done:
            report.already_replayed[reason] += 1
        else:
            todo.append(letter)
            report.replayed[reason] += 1
    if todo and not dry_run:
        await _publish(settings, kafka, topics.raw, todo)
    return report


async def _publish(settings: Settings, kafka: KafkaClients, topic: str, letters: list[DeadLetterAt]) -> None:
    """Send every letter's original bytes to ``topic``, keyed by its trace id, and wait for every ack."""
    producer = await kafka.start(kafka.producer(acks="all", enable_idempotence=True, max_request_size=2 * 1024 * 1024))
    try:
        futures = []
        for letter in letters:
            trace_id = letter.record.get("trace_id")
            futures.append(await producer.send(
                topic, letter.record["original"], key=trace_id.encode() if trace_id else None,
                headers=[(REPLAYED_FROM_HEADER, letter.coordinates.encode())],
            ))
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout=settings.kafka_delivery_timeout_s
        )
    except TimeoutError:
        raise ReplayFailed(
            f"Kafka did not acknowledge the {len(letters)} replayed events to {topic} within "
            f"{settings.kafka_delivery_timeout_s:.0f}s; some may be in the log: run the replay again "
            "(without --again, it skips those that arrived)"
        ) from None
    finally:
        with contextlib.suppress(Exception):  # after a timeout stop() would wait for the broker too
            await asyncio.wait_for(producer.stop(), timeout=10)
    failed = [(letter, r) for letter, r in zip(letters, results) if isinstance(r, BaseException)]
    if failed:
        letter, error = failed[0]
        raise ReplayFailed(
            f"Kafka did not acknowledge {len(failed)} of {len(letters)} replayed events to {topic} (first: dead "
            f"letter {letter.coordinates}: {error!r}); run the replay again: it skips those that arrived"
        )
