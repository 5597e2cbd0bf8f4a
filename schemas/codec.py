"""Avro single-object encoding: ``C3 01`` + 8-byte schema fingerprint + schemaless Avro body.

Every message names its writer schema, so old producers keep working as the
schema evolves and any consumer can decode any registered version.

Convention for ``timestamp-millis`` fields (``created_at``, ``failed_at``):
records hold a timezone-aware ``datetime``; decoding returns it in UTC,
which is fastavro's default. Avro keeps milliseconds, so a datetime with
sub-millisecond digits comes back truncated; ``schemas.models`` truncates
up front so encode → decode round-trips exactly. ``encode`` refuses naive
datetimes, because fastavro would read them as the machine's local time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from schemas.errors import (
    CorruptAvroError,
    EncodeError,
    NotAvroError,
    WrongSchemaError,
)
from schemas.registry import RegisteredSchema, SchemaRegistry

MAGIC = b"\xc3\x01"
HEADER_LEN = 10  # 2 marker bytes + 8 fingerprint bytes
_TIMESTAMPS = {"timestamp-millis", "timestamp-micros"}
# What fastavro raises for a record that does not fit the schema.
_ENCODE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, OverflowError)
# Defaults that fastavro returns as-is, so they can be filled without copying.
_PLAIN_DEFAULT_TYPES = {"string": str, "int": int, "long": int, "boolean": bool}

Reader = Callable[[BytesIO], dict]


def peek_fingerprint(data: bytes) -> bytes | None:
    """The writer fingerprint of a single-object message, or None if it is not one."""
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        return None
    return bytes(data[2:HEADER_LEN])


def _aware_timestamp_fields(schema: RegisteredSchema) -> tuple[str, ...]:
    """Top-level fields whose value must be a timezone-aware datetime (if a datetime)."""
    names = []
    for f in schema.definition.get("fields", ()):
        t = f["type"]
        if isinstance(t, dict) and t.get("logicalType") in _TIMESTAMPS:
            names.append(f["name"])
    return tuple(names)


def appended_defaults(writer: dict, reader: dict) -> dict | None:
    """Fields to add when ``reader`` is ``writer`` plus trailing plain-default fields.

    Then resolution is "decode with the writer, add defaults", about twice as
    fast as fastavro's general writer→reader resolution. Anything else → None
    (use the general path). Only docs may differ in the shared part.
    """
    w_fields, r_fields = writer.get("fields"), reader.get("fields")
    if writer.get("type") != "record" or reader.get("type") != "record":
        return None
    if _strip_docs({**writer, "fields": None}) != _strip_docs({**reader, "fields": None}):
        return None
    if len(r_fields) < len(w_fields) or _strip_docs(r_fields[: len(w_fields)]) != _strip_docs(
        w_fields
    ):
        return None
    added = {}
    for f in r_fields[len(w_fields) :]:
        if "default" not in f:
            return None
        t, value = f["type"], f["default"]
        if isinstance(t, list) and t and t[0] == "null" and value is None:
            added[f["name"]] = None
        elif isinstance(t, str) and type(value) is _PLAIN_DEFAULT_TYPES.get(t):
            added[f["name"]] = value
        else:
            return None
    return added


def _strip_docs(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_docs(v) for k, v in obj.items() if k != "doc"}
    if isinstance(obj, list):
        return [_strip_docs(v) for v in obj]
    return obj


class AvroCodec:
    """Encodes and decodes single-object Avro with the schemas of one registry.

    Per-schema work (headers, resolution plans) is cached by fingerprint; a
    schema registered later is picked up on first sight.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._headers: dict[bytes, tuple[bytes, tuple[str, ...]]] = {}
        self._readers: dict[tuple[bytes, bytes], Reader] = {}

    # --- encoding -----------------------------------------------------------

    def encode(self, record: dict, name: str, version: int | None = None) -> bytes:
        """Encode ``record`` with ``name`` at ``version`` (the latest when None)."""
        schema = self.registry.latest(name) if version is None else self.registry.get(name, version)
        cached = self._headers.get(schema.fingerprint)
        if cached is None:
            cached = (MAGIC + schema.fingerprint, _aware_timestamp_fields(schema))
            self._headers[schema.fingerprint] = cached
        header, stamps = cached
        for field_name in stamps:
            value = record.get(field_name)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise EncodeError(
                    f"{name} field {field_name} is a naive datetime; pass a timezone-aware "
                    "one (e.g. datetime.now(timezone.utc)), or epoch milliseconds"
                )
        out = BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, schema.parsed, record)
        except _ENCODE_ERRORS as exc:
            raise EncodeError(f"record does not fit {name} v{schema.version}: {exc}") from exc
        return out.getvalue()

    # --- decoding -----------------------------------------------------------

    def decode(self, data: bytes) -> tuple[dict, RegisteredSchema]:
        """The record exactly as its writer wrote it, and the writer's schema."""
        writer = self._writer(data)
        return self._read(data, writer, self._reader(writer, writer)), writer

    def decode_latest(self, data: bytes, name: str) -> tuple[dict, RegisteredSchema]:
        """The record resolved to the latest version of ``name``, and the WRITER's schema."""
        writer = self._writer(data)
        latest = self.registry.latest(name)
        if writer.name != name:
            raise WrongSchemaError(
                f"event was written with {writer.name} v{writer.version}, not {name}; "
                f"publish {name} events to this topic"
            )
        return self._read(data, writer, self._reader(writer, latest)), writer

    def _writer(self, data: bytes) -> RegisteredSchema:
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise NotAvroError(
                f"event does not start with the Avro single-object marker C3 01 and an 8-byte "
                f"schema fingerprint (got {len(data)} bytes starting {bytes(data[:4]).hex()}); "
                "encode events with the tracestream codec or an Avro single-object encoder"
            )
        fp = bytes(data[2:HEADER_LEN])
        return self.registry.by_fingerprint(fp)

    def _reader(self, writer: RegisteredSchema, reader: RegisteredSchema) -> Reader:
        key = (writer.fingerprint, reader.fingerprint)
        read = self._readers.get(key)
        if read is not None:
            return read
        w = writer.parsed
        if writer.fingerprint == reader.fingerprint:

            def read(fo: BytesIO) -> dict:
                return schemaless_reader(fo, w, None)

        else:
            added = appended_defaults(writer.definition, reader.definition)
            if added is not None:

                def read(fo: BytesIO) -> dict:
                    record = schemaless_reader(fo, w, None)
                    record.update(added)
                    return record

            else:
                r = reader.parsed

                def read(fo: BytesIO) -> dict:
                    return schemaless_reader(fo, w, r)

        self._readers[key] = read
        return read

    @staticmethod
    def _read(data: bytes, writer: RegisteredSchema, read: Reader) -> dict:
        fo = BytesIO(data)
        fo.seek(HEADER_LEN)
        try:
            record = read(fo)
        except Exception as exc:  # any failure on untrusted bytes means the body is corrupt
            raise CorruptAvroError(
                f"event body does not decode as {writer.name} v{writer.version} "
                f"({type(exc).__name__}: {exc}); the bytes were truncated or written "
                "with a different schema than their fingerprint says"
            ) from exc
        end = fo.tell()
        if end != len(data):
            raise CorruptAvroError(
                f"{len(data) - end} unexpected bytes after the {writer.name} "
                f"v{writer.version} record (record ends at byte {end} of {len(data)}); "
                "send exactly one encoded record per message"
            )
        return record
