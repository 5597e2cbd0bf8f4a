"""What a subscriber receives: one Kafka record, decoded by the schema registry, with its coordinates.

Every value names its writer schema (Avro single-object encoding), so a
record of any registered version decodes; the value is resolved to the
latest version of the writer's record type, so a subscriber sees one shape
(fields added later hold their defaults) and ``schema_version`` still says
which version wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka.structs import ConsumerRecord

from deploy.settings import Settings, Topics
from kafkalog.errors import UndecodableRecordError
from schemas.codec import AvroCodec, peek_fingerprint
from schemas.errors import DecodeError
from schemas.timeutil import from_millis

_LOGICAL = {name: field for field, name in Topics().model_dump().items()}
"""Logical topic name (``traces.valid``) → field of ``settings.topics``."""


def topic_name(settings: Settings, name: str) -> str:
    """The cluster topic for ``name``: a logical name (``traces.valid``) gets the settings' prefix.

    Any other name is taken as the full topic name, so a subscriber can read
    topics tracestream does not own.
    """
    field = _LOGICAL.get(name)
    return getattr(settings.topics, field) if field else name


def logical_names() -> list[str]:
    """The topics tracestream owns, by their logical names."""
    return sorted(_LOGICAL)


def _key(raw: bytes | None) -> str | None:
    # tracestream keys are text ids (trace_id, run_id, dataset name); show any other bytes escaped, not lost.
    return None if raw is None else raw.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class Record:
    """One decoded record and where it lives in the log."""

    topic: str
    """Topic name on the cluster (prefix included)."""
    partition: int
    """Partition number."""
    offset: int
    """Offset within the partition."""
    timestamp: datetime
    """The broker record's timestamp, UTC."""
    key: str | None
    """The message key as text (trace_id, run_id, dataset name), None when the record has none."""
    schema: str
    """Writer schema's record name, e.g. ``Trace``."""
    schema_version: int
    """Writer schema's version in the registry (``Trace`` v1 or v2, ...)."""
    value: dict[str, Any]
    """The value resolved to the latest registered version of ``schema``."""
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's headers, in order."""

    @property
    def coordinates(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Undecodable:
    """A record whose value could not be decoded; only yielded when the subscriber asks for them."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime
    key: str | None
    reason: str
    """Dead-letter reason code: not_avro, unknown_schema or corrupt_avro."""
    message: str
    """What is wrong with the bytes and where they are."""
    original: bytes
    """The value exactly as it is in the log."""
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def coordinates(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode_record(message: ConsumerRecord, codec: AvroCodec) -> Record:
    """``message`` as a ``Record``.

    Raises:
        UndecodableRecordError: the value is not single-object Avro of a registered schema; the
            message names the topic, partition and offset.
    """
    data = message.value or b""
    try:
        fp = peek_fingerprint(data)
        if fp is None:
            codec.decode(data)  # raises NotAvroError with the details
        writer = codec.registry.by_fingerprint(fp)
        value, _ = codec.decode_latest(data, writer.name)
    except DecodeError as exc:
        raise UndecodableRecordError(
            f"{message.topic}[{message.partition}]@{message.offset} cannot be decoded ({exc.reason}): {exc}",
            topic=message.topic, partition=message.partition, offset=message.offset, reason=exc.reason,
            original=bytes(data),
        ) from exc
    return Record(
        message.topic, message.partition, message.offset, from_millis(message.timestamp), _key(message.key),
        writer.name, writer.version, value, tuple(message.headers or ()),
    )


def undecodable(message: ConsumerRecord, error: UndecodableRecordError) -> Undecodable:
    """The error item for ``message``."""
    return Undecodable(
        message.topic, message.partition, message.offset, from_millis(message.timestamp), _key(message.key),
        error.reason, str(error), error.original, tuple(message.headers or ()),
    )
