"""The schema registry: versioned Avro schemas, keyed by record name and by fingerprint.

A new version is accepted only if it is BACKWARD compatible with the latest
one (its reader can read the previous writer's data), so a consumer on the
latest schema never meets an event it cannot decode. The rules are Apache
Avro's own (``avro.compatibility``), not ours.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import avro.errors
import avro.schema
import fastavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import SchemaParseException, to_parsing_canonical_form

from schemas.errors import (
    ConfigurationError,
    IncompatibleSchemaError,
    SchemaDefinitionError,
    UnknownFingerprintError,
    UnknownSchemaError,
)

_AVSC_NAME = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class RegisteredSchema:
    """One registered version. Equality and hash use name, version and fingerprint."""

    name: str
    version: int
    fingerprint: bytes
    definition: dict = field(compare=False, repr=False)
    parsed: Any = field(compare=False, repr=False)


def fingerprint(definition: dict) -> bytes:
    """CRC-64-AVRO (Rabin) of the Parsing Canonical Form, 8 bytes little-endian.

    This is what the Avro single-object encoding puts after ``C3 01``. We use
    fastavro's canonical form: Apache avro 1.12's ``Schema.canonical_form``
    keeps ``{"type":"long"}`` for logical types instead of ``"long"``, so its
    fingerprints differ from Java's for our timestamp fields.
    """
    pcf = to_parsing_canonical_form(definition)
    return bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


def _incompatibility_message(name: str, new: int, old: int, result: Any) -> str:
    kinds = ", ".join(sorted({i.value for i in result.incompatibilities}))
    details = "; ".join(sorted(result.messages))
    where = ", ".join(sorted(result.locations - {"/"}) or ["/"])
    return (
        f"schema {name} v{new} is not backward compatible with {name} v{old} "
        f"(a v{new} reader cannot read v{old} data): {kinds} [{details}] at {where}; "
        "give new fields a default and keep existing field types"
    )


class SchemaRegistry:
    """In-process registry. Writes take a lock; reads are plain dict lookups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, tuple[RegisteredSchema, ...]] = {}
        self._by_fp: dict[bytes, RegisteredSchema] = {}

    def register(self, name: str, definition: dict) -> RegisteredSchema:
        """Add ``definition`` as the next version of ``name``; same fingerprint → the existing entry.

        Only the fingerprint decides "identical": a change to docs alone does
        not make a new version, because the wire bytes could not tell them apart.
        """
        definition = copy.deepcopy(definition)
        try:
            parsed = fastavro.parse_schema(copy.deepcopy(definition))
            apache = avro.schema.parse(json.dumps(definition))
        except (SchemaParseException, avro.errors.AvroException, TypeError, ValueError) as exc:
            raise SchemaDefinitionError(f"schema {name} is not valid Avro: {exc}") from exc
        fp = fingerprint(definition)
        with self._lock:
            existing = self._by_name.get(name, ())
            for entry in existing:
                if entry.fingerprint == fp:
                    return entry
            other = self._by_fp.get(fp)
            if other is not None:
                raise SchemaDefinitionError(
                    f"schema {name} has the same fingerprint {fp.hex()} as {other.name} "
                    f"v{other.version}; one schema cannot be registered under two names"
                )
            version = len(existing) + 1
            if existing:
                self._check_backward(name, version, apache, existing[-1])
            entry = RegisteredSchema(name, version, fp, definition, parsed)
            self._by_name[name] = existing + (entry,)
            self._by_fp[fp] = entry
            return entry

    @staticmethod
    def _check_backward(name: str, version: int, reader: Any, previous: RegisteredSchema) -> None:
        writer = avro.schema.parse(json.dumps(previous.definition))
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            raise IncompatibleSchemaError(
                _incompatibility_message(name, version, previous.version, result)
            )

    def latest(self, name: str) -> RegisteredSchema:
        versions = self._by_name.get(name)
        if not versions:
            raise UnknownSchemaError(f"no schema is registered under the name {name!r}")
        return versions[-1]

    def get(self, name: str, version: int) -> RegisteredSchema:
        versions = self._by_name.get(name, ())
        if not 1 <= version <= len(versions):
            known = f"versions 1..{len(versions)}" if versions else "no versions"
            raise UnknownSchemaError(f"schema {name!r} has no version {version} ({known})")
        return versions[version - 1]

    def by_fingerprint(self, fp: bytes) -> RegisteredSchema:
        entry = self._by_fp.get(fp)
        if entry is None:
            raise UnknownFingerprintError(fp)
        return entry

    def versions(self, name: str) -> list[RegisteredSchema]:
        """All versions of ``name``, oldest first; empty for an unknown name."""
        return list(self._by_name.get(name, ()))

    def names(self) -> list[str]:
        return sorted(self._by_name)


def _record_name(file_name: str) -> str:
    """``dead_letter`` → ``DeadLetter``: file names are snake_case, Avro names CamelCase."""
    return "".join(part.capitalize() for part in file_name.split("_"))


@functools.cache
def default_registry() -> SchemaRegistry:
    """The packaged schemas (``schemas/avro/<name>.v<N>.avsc``), registered in version order.

    Registering them through ``register`` means every shipped version has
    passed the compatibility check; a gap in the numbering is a packaging bug.
    """
    found: dict[str, dict[int, Any]] = {}
    for item in resources.files("schemas").joinpath("avro").iterdir():
        match = _AVSC_NAME.match(item.name)
        if match:
            found.setdefault(match["name"], {})[int(match["version"])] = item
    registry = SchemaRegistry()
    for file_name, by_version in sorted(found.items()):
        name = _record_name(file_name)
        for version in sorted(by_version):
            definition = json.loads(by_version[version].read_text(encoding="utf-8"))
            if definition.get("name") != name:
                raise ConfigurationError(
                    f"{file_name}.v{version}.avsc defines record {definition.get('name')!r}, "
                    f"expected {name!r}"
                )
            entry = registry.register(name, definition)
            if entry.version != version:
                raise ConfigurationError(
                    f"{file_name}.v{version}.avsc registered as {name} v{entry.version}; "
                    "schema files must be numbered 1, 2, 3… without gaps or duplicates"
                )
    return registry
