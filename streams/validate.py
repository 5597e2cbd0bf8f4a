"""The validate stage: raw bytes in, a normalized trace or a dead letter out.

Kept free of faust so the rules of the stream can be tested without one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.codec import AvroCodec
from schemas.contracts import DEAD_LETTER, TRACE
from schemas.errors import DecodeError
from schemas.validation import Violation, check_event_size, check_trace, normalize
from streams.coordinates import Coordinates, source_headers
from streams.stage import Batches
from streams.transactions import Output, PartitionTransactions

log = logging.getLogger(__name__)

WRITER_VERSION_HEADER = "tracestream-writer-version"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A trace for traces.valid: latest schema version, normalized."""

    key: bytes
    payload: bytes
    writer_version: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A dead letter for traces.dlq, already encoded."""

    key: bytes | None
    payload: bytes
    reason: str
    at: Coordinates
    """Where the event that failed sits."""


def dead_letter(
    codec: AvroCodec,
    original: bytes,
    *,
    reason: str,
    message: str,
    stage: str,
    at: Coordinates,
    trace_id: str | None,
) -> Rejected:
    """Encode a DeadLetter record that keeps the original bytes and says where they came from."""
    record = {
        "original": original,
        "reason": reason,
        "message": f"{at}: {message}",
        "stage": stage,
        "source_topic": at.topic,
        "source_partition": at.partition,
        "source_offset": at.offset,
        "trace_id": trace_id,
        "failed_at": datetime.now(timezone.utc),
    }
    key = trace_id.encode() if trace_id else None
    return Rejected(key=key, payload=codec.encode(record, DEAD_LETTER), reason=reason, at=at)


class Validator:
    """Decides, event by event, between traces.valid and traces.dlq. Never raises for bad input."""

    def __init__(self, codec: AvroCodec, *, max_event_bytes: int) -> None:
        self.codec = codec
        self.max_event_bytes = max_event_bytes
        self.latest_version = codec.registry.latest(TRACE).version

    def __call__(self, value: bytes | None, key: bytes | None, at: Coordinates) -> Accepted | Rejected:
        value = value or b""
        trace_id = _key_text(key)
        violation = check_event_size(len(value), self.max_event_bytes)
        if violation is not None:
            return self._reject(value, violation.reason, violation.message, at, trace_id)
        try:
            record, writer = self.codec.decode_latest(value, TRACE)
        except DecodeError as exc:
            return self._reject(value, exc.reason, str(exc), at, trace_id)
        trace_id = record.get("trace_id") or trace_id
        violation = check_trace(record)
        if violation is not None:
            return self._reject(value, violation.reason, violation.message, at, trace_id)
        normalized = normalize(record)
        if writer.version == self.latest_version and normalized == record:
            payload = value  # already canonical: skip a re-encode on the hot path
        else:
            payload = self.codec.encode(normalized, TRACE)
        return Accepted(key=record["trace_id"].encode(), payload=payload, writer_version=writer.version)

    def _reject(
        self, value: bytes, reason: str, message: str, at: Coordinates, trace_id: str | None
    ) -> Rejected:
        return dead_letter(
            self.codec, value, reason=str(reason), message=message, stage="validate", at=at, trace_id=trace_id
        )


class ValidateStage:
    """traces.raw → traces.valid | traces.dlq, exactly once, each output in its source partition.

    Each raw partition's batch commits in one Kafka transaction with its
    consumed offset (``streams.transactions``). Outputs keep their raw
    partition and carry the raw topic and offset as headers: lineage, so any
    output can be traced back to the event it was made from.
    """

    name = "validate"

    def __init__(
        self, validator: Validator, transactions: PartitionTransactions, *, raw: str, valid: str, dlq: str,
    ) -> None:
        self.validator = validator
        self.transactions = transactions
        self.topics = (raw,)
        self.raw, self.valid, self.dlq = raw, valid, dlq
        self.validated = 0
        self.dead_lettered: Counter[str] = Counter()

    @property
    def needs_prepare(self) -> bool:
        return self.transactions.needs_prepare

    async def on_assigned(self, partitions: set[TopicPartition], consumer: AIOKafkaConsumer) -> bool:
        await self.transactions.take_over(partitions, consumer)
        return True

    async def process(self, batches: Batches, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        await asyncio.gather(*(self._validate(tp, batches.get(tp, ()), offset) for tp, offset in offsets.items()))
        return {}  # committed inside each partition's transaction

    async def close(self) -> None:
        await self.transactions.close()

    async def _validate(self, tp: TopicPartition, records: Sequence[ConsumerRecord], offset: int) -> None:
        outputs: list[Output] = []
        valid = 0
        reasons: Counter[str] = Counter()
        for record in records:
            at = Coordinates(record.topic, record.partition, record.offset)
            outcome = self.validator(record.value, record.key, at)
            headers = source_headers(at)
            if isinstance(outcome, Accepted):
                valid += 1
                headers.append((WRITER_VERSION_HEADER, str(outcome.writer_version).encode()))
                outputs.append((self.valid, outcome.key, outcome.payload, headers))
            else:
                reasons[outcome.reason] += 1
                outputs.append((self.dlq, outcome.key, outcome.payload, headers))

        def count() -> None:
            self.validated += valid
            self.dead_lettered.update(reasons)

        await self.transactions.commit(tp, offset, outputs, on_committed=count)


def _key_text(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


__all__ = ["Accepted", "Rejected", "Validator", "Violation", "dead_letter"]
