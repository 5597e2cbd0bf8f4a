"""Canonical bytes and the content hash of dataset records.

A dataset is not a copy of rows. Its manifest names exact ``[start, end)``
offset ranges of a topic (``traces.valid``) plus a filter and a split, so it
can be rebuilt from Kafka (replay) or from ClickHouse. Both read paths turn
what they read into the same "dataset record" dict::

    topic: str, partition: int, offset: int, trace_id: str, trace_version: int,
    prompt: str, steps: [{"i": int, "type": str, "content": str}] (sorted by i),
    final_answer: str, meta: {str: str}, source: str,
    created_at: datetime (timezone-aware UTC, millisecond precision),
    score: float | None, model: str | None

and feed it, in (partition, offset) order, through ``select`` and
``ContentHasher``. Everything here is pure and deterministic, so the two
paths agree by construction: same manifest → same records → same
``content_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from dataset.checks import iso_millis
from schemas.errors import DatasetIntegrityError

RECORD_KEYS = (
    "topic",
    "partition",
    "offset",
    "trace_id",
    "trace_version",
    "prompt",
    "steps",
    "final_answer",
    "meta",
    "source",
    "created_at",
    "score",
    "model",
)

# --- canonical bytes and the content hash -----------------------------------


def canonical_record(record: Mapping[str, Any]) -> dict:
    """The dataset record as plain JSON values: exactly ``RECORD_KEYS``, steps sorted by ``i``,
    ``created_at`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``. Extra keys a reader adds are dropped and
    numbers are coerced to int/float, so both read paths give the same bytes."""
    try:
        score = record["score"]
        steps = [{"i": int(s["i"]), "type": s["type"], "content": s["content"]} for s in record["steps"]]
        last = None
        for step in steps:  # readers give them in order; sort only when they are not
            if last is not None and step["i"] < last:
                steps.sort(key=itemgetter("i"))  # stable, as sorted() was: equal indexes keep their order
                break
            last = step["i"]
        return {
            "topic": record["topic"],
            "partition": int(record["partition"]),
            "offset": int(record["offset"]),
            "trace_id": record["trace_id"],
            "trace_version": int(record["trace_version"]),
            "prompt": record["prompt"],
            "steps": steps,
            "final_answer": record["final_answer"],
            "meta": dict(record["meta"]),
            "source": record["source"],
            "created_at": iso_millis(record["created_at"]),
            "score": None if score is None else float(score),
            "model": record["model"],
        }
    except KeyError as exc:
        raise DatasetIntegrityError(
            f"dataset record has no {exc.args[0]!r}; readers must return every key of "
            f"{list(RECORD_KEYS)} (model and score may be None)"
        ) from None


def canonical_bytes(value: Any) -> bytes:
    """The one canonical JSON rule (sorted keys, no spaces, UTF-8, not ASCII-escaped): what the content
    hashes of stored manifests were made with, and what run events carry (``trainer.run.event_json``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_ORJSON_SORTED = orjson.OPT_SORT_KEYS


def json_bytes(value: Any) -> bytes:
    """``value`` (strings, ints, None, and lists and dicts of them; floats only if ``_plain_float``) as canonical JSON.

    Byte for byte ``json.dumps(value, sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))`` in UTF-8, written by orjson: for these types the two
    agree (every code point and escape, key order by code point; checked in
    ``tests/unit/test_dataset_hashing.py``). What orjson refuses (ints past 64
    bits, lone surrogates, non-string keys) goes to ``json``, which decides.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_SORTED)
    except orjson.JSONEncodeError:
        return canonical_bytes(value)


def _plain_float(value: float | None) -> bool:
    """Whether orjson writes ``value`` as ``json.dumps`` does (Python's ``repr``).

    They agree exactly where ``repr`` uses no exponent (0 and 1e-4 <= |x| < 1e16);
    outside that orjson writes ``1e-5`` where ``json`` writes ``1e-05``, and
    ``null`` for ``NaN``.
    """
    return value is None or value == 0.0 or 1e-4 <= abs(value) < 1e16


def float_json(value: float | None) -> bytes:
    """A float (or None) as ``json.dumps`` writes it (``repr``; ``NaN``, ``Infinity``)."""
    return orjson.dumps(value) if _plain_float(value) else canonical_bytes(value)


class Canonical(NamedTuple):
    """A dataset record in canonical form, serialized once.

    ``data`` is the canonical JSON (``{"created_at":…,"trace_version":…}``),
    the bytes hashed; export lines are cut and spliced from it
    (``dataset.formats``), so no record is serialized twice.
    """

    record: dict
    """``canonical_record(record)``: plain values."""
    data: bytes
    """The canonical JSON of the record (no newline)."""


def canonical(record: Mapping[str, Any]) -> Canonical:
    """``record`` in canonical form: ``canonical_record`` and its JSON, serialized once."""
    c = canonical_record(record)
    if _plain_float(c["score"]):  # the one float of a record
        data = json_bytes(c)
    else:
        data = canonical_bytes(c)
    return Canonical(c, data)


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """The exact bytes hashed for a dataset record: sorted keys, no spaces, UTF-8 text."""
    return canonical(record).data


HASH_FORMAT = 1
"""The rule new manifests' ``content_sha256`` is made with (the manifest's ``hash_format``)."""
HASH_FORMATS = (1,)
"""Every rule this code can verify. 1: sha256 over ``canonical_json(record) + b"\\n"`` per record. A change
to the canonical bytes gets a new number here, and manifests written before it keep verifying by theirs."""


class ContentHasher:
    """``content_sha256``: sha256 over ``canonical_json(record) + b"\\n"`` per record (hash format 1).

    Records must come in strictly increasing (partition, offset) order, the
    order the manifest defines; going backwards or repeating an offset means
    the reader re-delivered or reordered, and the hash would not be stable.
    """

    def __init__(self, hash_format: int = HASH_FORMAT) -> None:
        if hash_format not in HASH_FORMATS:
            raise DatasetIntegrityError(
                f"hash format {hash_format} is not one this version knows ({list(HASH_FORMATS)}); "
                "read this dataset with the tracestream version that created it, or a later one"
            )
        self.hash_format = hash_format
        self._sha = hashlib.sha256()
        self._last: tuple[int, int] | None = None
        self.count = 0

    def add(self, record: Mapping[str, Any]) -> Canonical:
        """Hash ``record``; returns its canonical form, for writing it without serializing it again."""
        c = canonical(record)
        self.add_canonical(c)
        return c

    def add_canonical(self, c: Canonical) -> None:
        """Hash a record already in canonical form."""
        position = (c.record["partition"], c.record["offset"])
        self._check(position)
        self._last = position
        self._sha.update(c.data + b"\n")
        self.count += 1

    def add_lines(self, lines: CanonicalLines) -> None:
        """Hash records serialized elsewhere (another process), in order after those hashed so far."""
        if not lines.count:
            return
        self._check(lines.first)
        self._last = lines.last
        self._sha.update(lines.data)
        self.count += lines.count

    def _check(self, position: tuple[int, int]) -> None:
        if self._last is not None and position <= self._last:
            raise DatasetIntegrityError(
                f"record at partition {position[0]} offset {position[1]} came after partition "
                f"{self._last[0]} offset {self._last[1]}; read dataset records once each, "
                "in (partition, offset) order"
            )

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class CanonicalLines(NamedTuple):
    """What ``ContentHasher.add_lines`` hashes: consecutive records' ``canonical_json + b"\\n"``, and where they are."""

    data: bytes
    count: int
    first: tuple[int, int] | None
    """(partition, offset) of the first record; None when there is none."""
    last: tuple[int, int] | None


class LineCollector(ContentHasher):
    """A ``ContentHasher`` that keeps the bytes instead of hashing them, for a hasher in another process."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._first: tuple[int, int] | None = None

    def add_canonical(self, c: Canonical) -> None:
        position = (c.record["partition"], c.record["offset"])
        self._check(position)
        if self._first is None:
            self._first = position
        self._last = position
        self._parts.append(c.data)
        self.count += 1

    def lines(self) -> CanonicalLines:
        data = b"\n".join(self._parts) + b"\n" if self._parts else b""
        return CanonicalLines(data, self.count, self._first, self._last)


def content_sha256(records: Iterable[Mapping[str, Any]]) -> str:
    """Hash already-selected records in one call."""
    hasher = ContentHasher()
    for record in records:
        hasher.add(record)
    return hasher.hexdigest()
