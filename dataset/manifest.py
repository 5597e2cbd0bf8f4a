"""Datasets are offset ranges: the manifest, the filter, the split and the content hash.

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

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, Literal, NamedTuple

import orjson

from schemas.errors import DatasetIntegrityError, InvalidDatasetRequest

DEFAULT_TOPIC = "traces.valid"
EVENT_TYPES = ("created", "ready", "failed")
WHICH = ("all", "train", "eval")
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

_INT32_MAX = 2**31 - 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

SplitName = Literal["train", "eval"]
Which = Literal["all", "train", "eval"]


# --- small checks -----------------------------------------------------------


def _int(what: str, value: Any, low: int = 0, high: int = _INT32_MAX) -> int:
    """``value`` if it is an int in [low, high]; Avro ints are 32-bit, fastavro would not say."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDatasetRequest(f"{what} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidDatasetRequest(f"{what} must be between {low} and {high}, got {value}")
    return value


def _float(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidDatasetRequest(f"{what} must be a number, got {value!r}")
    return float(value)


def _utc_millis(what: str, value: Any) -> datetime:
    """An aware datetime in UTC, truncated to milliseconds, so Avro round trips are exact.

    Naive datetimes are refused rather than guessed: fastavro would read them
    as the machine's local time.
    """
    if not isinstance(value, datetime):
        raise InvalidDatasetRequest(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidDatasetRequest(
            f"{what} is a naive datetime ({value.isoformat()}); pass a timezone-aware one, "
            "e.g. datetime(..., tzinfo=timezone.utc)"
        )
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def iso_millis(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC: how dataset records and filters render instants."""
    if value.tzinfo is timezone.utc:  # what both readers return: no conversion needed
        v = value
    elif value.tzinfo is None or value.utcoffset() is None:
        raise DatasetIntegrityError(
            f"created_at {value.isoformat()} has no timezone; dataset readers must return "
            "timezone-aware UTC datetimes (attach timezone.utc to warehouse values)"
        )
    else:
        v = value.astimezone(timezone.utc)
    # isoformat truncates to milliseconds and pads the year to 4 digits; a UTC datetime ends in "+00:00".
    return v.isoformat(timespec="milliseconds")[:-6] + "Z"


def check_name(name: Any) -> str:
    """A dataset name: it is a Kafka key and a folder name, so keep it to a safe alphabet."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidDatasetRequest(
            f"dataset name {name!r} is not allowed; use 1-128 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name


# --- offset ranges ----------------------------------------------------------


class OffsetRange(NamedTuple):
    """Offsets ``[start, end)`` of one partition. ``len()`` is the tuple's; use ``size``."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, offset: object) -> bool:  # type: ignore[override]
        return isinstance(offset, int) and self.start <= offset < self.end

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@[{self.start}, {self.end})"


def _check_range(r: OffsetRange) -> OffsetRange:
    _int(f"partition of {r}", r.partition)
    _int(f"start offset of {r}", r.start, 0, 2**63 - 1)
    _int(f"end offset of {r}", r.end, 0, 2**63 - 1)
    if r.start > r.end:
        raise InvalidDatasetRequest(
            f"offset range {r} starts after it ends; give [start, end) with start <= end"
        )
    return r


def parse_offsets_json(text: str, topic: str = DEFAULT_TOPIC) -> tuple[OffsetRange, ...]:
    """``{"0": [0, 100], "1": [5, 50]}`` → ranges sorted by partition (end exclusive)."""
    example = 'e.g. {"0": [0, 100], "1": [5, 50]} for partition: [start, end)'

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise InvalidDatasetRequest(
                    f"offsets JSON names partition {key!r} twice; {example}"
                )
            seen[key] = value
        return seen

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidDatasetRequest(f"offsets are not valid JSON ({exc}); {example}") from None
    if not isinstance(obj, dict) or not obj:
        raise InvalidDatasetRequest(f"offsets must be a non-empty JSON object; {example}")
    ranges: dict[int, OffsetRange] = {}
    for key, value in obj.items():
        if not re.fullmatch(r"[0-9]+", key) or int(key) > _INT32_MAX:
            raise InvalidDatasetRequest(
                f"offsets key {key!r} is not a partition number (0 or more); {example}"
            )
        partition = int(key)
        if partition in ranges:
            raise InvalidDatasetRequest(
                f"offsets JSON names partition {partition} twice; {example}"
            )
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
        ):
            raise InvalidDatasetRequest(
                f"offsets for partition {partition} must be [start, end] integers, "
                f"got {json.dumps(value)}; {example}"
            )
        start, end = value
        if start < 0 or end < 0:
            raise InvalidDatasetRequest(
                f"offsets for partition {partition} are negative ({start}, {end}); "
                "Kafka offsets start at 0"
            )
        ranges[partition] = _check_range(OffsetRange(topic, partition, start, end))
    return tuple(ranges[p] for p in sorted(ranges))


def plan_ranges(
    topic: str,
    ends: Mapping[int, int],
    *,
    parent: Manifest | None = None,
    starts: Mapping[int, int] | None = None,
) -> tuple[OffsetRange, ...]:
    """The ranges of a new snapshot: up to ``ends`` (high watermarks), from the parent's ends.

    Without a parent a partition starts at ``starts`` (the log start offsets)
    or 0. With one, every partition starts where the parent's range ended,
    which is what "everything since parent" means. A high watermark below the
    parent's end, or a parent offset already deleted by retention, is refused:
    the dataset could not be rebuilt.
    """
    starts = starts or {}
    parent_ends: dict[int, int] = {}
    if parent is not None:
        if parent.topic != topic:
            raise InvalidDatasetRequest(
                f"parent {parent.ref} points into {parent.topic!r}, not {topic!r}; "
                "a child dataset must use its parent's topic"
            )
        parent_ends = {r.partition: r.end for r in parent.ranges}
        missing = sorted(set(parent_ends) - set(ends))
        if missing:
            raise InvalidDatasetRequest(
                f"partitions {missing} of parent {parent.ref} are missing from {topic!r}; "
                "the topic was recreated, so start a new dataset without a parent"
            )
    out = []
    for partition in sorted(ends):
        end = ends[partition]
        log_start = starts.get(partition, 0)
        start = parent_ends.get(partition, log_start)
        if end < start:
            raise InvalidDatasetRequest(
                f"{topic}[{partition}] ends at {end}, before the parent's end {start}; "
                "the topic was recreated, so start a new dataset without a parent"
            )
        if start < log_start and end > start:
            raise InvalidDatasetRequest(
                f"{topic}[{partition}] offsets [{start}, {log_start}) were deleted by retention; "
                "the dataset cannot be rebuilt from the log (keep retention.ms=-1 on this topic)"
            )
        out.append(_check_range(OffsetRange(topic, partition, start, end)))
    return tuple(out)


# --- the filter -------------------------------------------------------------

_FILTER_FORMS = (
    "source=A,B",
    "trace_version=1,2",
    "meta.KEY=VALUE",
    "created_from=ISO-8601",
    "created_until=ISO-8601",
    "steps>=N",
    "steps<=N",
    "score>=X",
    "score<=X",
)
_EXPRESSION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|=)\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class TraceFilter:
    """Which records of the ranges belong to a dataset; every condition set must hold.

    Sequences are normalized to sorted, de-duplicated tuples and ``meta`` (a
    mapping or pairs) to key-sorted pairs, so equal filters compare and
    serialize equal. Instants are UTC milliseconds; ``created_from`` is
    inclusive, ``created_until`` exclusive; score bounds are inclusive and
    a record without a score never passes one.
    """

    sources: tuple[str, ...] = ()
    trace_versions: tuple[int, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    created_from: datetime | None = None
    created_until: datetime | None = None
    min_steps: int | None = None
    max_steps: int | None = None
    min_score: float | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.sources, str):
            raise InvalidDatasetRequest("sources must be a sequence of strings, not one string")
        for s in self.sources:
            if not isinstance(s, str) or not s:
                raise InvalidDatasetRequest(f"sources must be non-empty strings, got {s!r}")
        put("sources", tuple(sorted(set(self.sources))))
        put(
            "trace_versions",
            tuple(sorted({_int("trace_version", v, -(2**31)) for v in self.trace_versions})),
        )
        pairs = self.meta.items() if isinstance(self.meta, Mapping) else self.meta
        meta: dict[str, str] = {}
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair) or not pair[0]:
                raise InvalidDatasetRequest(
                    f"meta conditions must be (key, value) strings, got {pair!r}"
                )
            key, value = pair
            if meta.get(key, value) != value:
                raise InvalidDatasetRequest(
                    f"meta.{key} is required to be both {meta[key]!r} and {value!r}; keep one"
                )
            meta[key] = value
        put("meta", tuple(sorted(meta.items())))
        for name in ("created_from", "created_until"):
            value = getattr(self, name)
            if value is not None:
                put(name, _utc_millis(name, value))
        for name in ("min_steps", "max_steps"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name))
        for name in ("min_score", "max_score"):
            if getattr(self, name) is not None:
                put(name, _float(name, getattr(self, name)))
        for low, high, empty, what in (
            ("created_from", "created_until", True, "created_from must be before created_until"),
            ("min_steps", "max_steps", False, "min_steps must be at most max_steps"),
            ("min_score", "max_score", False, "min_score must be at most max_score"),
        ):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and (lo > hi or (empty and lo == hi)):
                raise InvalidDatasetRequest(f"{what} (got {lo} and {hi}); no trace could match")

    @property
    def is_empty(self) -> bool:
        return self == TraceFilter()

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether a dataset record passes every condition."""
        if self.sources and record["source"] not in self.sources:
            return False
        if self.trace_versions and record["trace_version"] not in self.trace_versions:
            return False
        if self.meta:
            meta = record["meta"]
            for key, value in self.meta:
                if meta.get(key) != value:
                    return False
        if self.created_from is not None and record["created_at"] < self.created_from:
            return False
        if self.created_until is not None and record["created_at"] >= self.created_until:
            return False
        if self.min_steps is not None or self.max_steps is not None:
            n = len(record["steps"])
            if self.min_steps is not None and n < self.min_steps:
                return False
            if self.max_steps is not None and n > self.max_steps:
                return False
        if self.min_score is not None or self.max_score is not None:
            score = record["score"]
            if score is None:
                return False
            if self.min_score is not None and not score >= self.min_score:
                return False
            if self.max_score is not None and not score <= self.max_score:
                return False
        return True

    def expressions(self) -> tuple[str, ...]:
        """The filter as ``parse_filter`` expressions; ``parse_filter(f.expressions()) == f``
        (sources containing a comma excepted)."""
        out = []
        if self.sources:
            out.append("source=" + ",".join(self.sources))
        if self.trace_versions:
            out.append("trace_version=" + ",".join(map(str, self.trace_versions)))
        out.extend(f"meta.{k}={v}" for k, v in self.meta)
        if self.created_from is not None:
            out.append(f"created_from={iso_millis(self.created_from)}")
        if self.created_until is not None:
            out.append(f"created_until={iso_millis(self.created_until)}")
        if self.min_steps is not None:
            out.append(f"steps>={self.min_steps}")
        if self.max_steps is not None:
            out.append(f"steps<={self.max_steps}")
        if self.min_score is not None:
            out.append(f"score>={self.min_score!r}")
        if self.max_score is not None:
            out.append(f"score<={self.max_score!r}")
        return tuple(out)

    def describe(self) -> str:
        """One line for logs and the CLI, e.g. ``source=a,b; steps>=2``; ``all traces`` if empty."""
        return "; ".join(self.expressions()) or "all traces"

    def to_avro(self) -> dict:
        return {
            "sources": list(self.sources),
            "trace_versions": list(self.trace_versions),
            "meta": dict(self.meta),
            "created_from": self.created_from,
            "created_until": self.created_until,
            "min_steps": self.min_steps,
            "max_steps": self.max_steps,
            "min_score": self.min_score,
            "max_score": self.max_score,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> TraceFilter:
        return cls(
            sources=tuple(record.get("sources", ())),
            trace_versions=tuple(record.get("trace_versions", ())),
            meta=tuple(record.get("meta", {}).items()),
            created_from=record.get("created_from"),
            created_until=record.get("created_until"),
            min_steps=record.get("min_steps"),
            max_steps=record.get("max_steps"),
            min_score=record.get("min_score"),
            max_score=record.get("max_score"),
        )


def _refuse(expression: str, why: str) -> InvalidDatasetRequest:
    return InvalidDatasetRequest(
        f"filter expression {expression!r} {why}; accepted forms: " + ", ".join(_FILTER_FORMS)
    )


def _parse_instant(expression: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _refuse(expression, "has no ISO-8601 instant, e.g. 2024-05-01T12:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _parse_number(expression: str, text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise _refuse(expression, f"needs {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise _refuse(expression, "needs a finite number")
    return value


def parse_filter(expressions: Sequence[str]) -> TraceFilter:
    """CLI expressions → a filter. ``source=`` and ``trace_version=`` may repeat (their values
    add up); any other condition given twice is refused. Instants without a timezone are UTC.
    ``meta.KEY=VALUE`` takes VALUE verbatim, spaces included."""
    if isinstance(expressions, str):
        expressions = [expressions]
    sources: list[str] = []
    versions: list[int] = []
    meta: dict[str, str] = {}
    scalars: dict[str, Any] = {}
    names = {
        ("created_from", "="): "created_from",
        ("created_until", "="): "created_until",
        ("steps", ">="): "min_steps",
        ("steps", "<="): "max_steps",
        ("score", ">="): "min_score",
        ("score", "<="): "max_score",
    }
    for expr in expressions:
        if not isinstance(expr, str):
            raise _refuse(str(expr), "is not a string")
        if expr.startswith("meta."):
            key, sep, value = expr[len("meta.") :].partition("=")
            key = key.strip()
            if not sep or not key or any(c in key for c in "<>"):
                raise _refuse(expr, "is not meta.KEY=VALUE")
            if meta.get(key, value) != value:
                raise _refuse(expr, f"contradicts meta.{key}={meta[key]}")
            meta[key] = value
            continue
        m = _EXPRESSION.match(expr)
        if not m:
            raise _refuse(expr, "is not recognized")
        key, op, value = m.groups()
        if not value:
            raise _refuse(expr, "has no value")
        if (key, op) == ("source", "="):
            parts = [p.strip() for p in value.split(",")]
            if not all(parts):
                raise _refuse(expr, "has an empty source name")
            sources.extend(parts)
        elif (key, op) == ("trace_version", "="):
            versions.extend(_parse_number(expr, p.strip(), int) for p in value.split(","))
        elif (key, op) in names:
            name = names[(key, op)]
            if name in scalars:
                raise _refuse(expr, f"repeats a condition on {key}{op}; give it once")
            if key.startswith("created_"):
                scalars[name] = _parse_instant(expr, value)
            else:
                scalars[name] = _parse_number(expr, value, int if key == "steps" else float)
        else:
            raise _refuse(expr, "is not recognized")
    try:
        return TraceFilter(
            sources=tuple(sources),
            trace_versions=tuple(versions),
            meta=tuple(meta.items()),
            **scalars,
        )
    except InvalidDatasetRequest as exc:
        raise InvalidDatasetRequest(f"filter {list(expressions)} is not usable: {exc}") from None


# --- the split --------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Deterministic train/eval assignment by trace id, never random.

    A trace is eval when the first 8 bytes of ``sha256(salt + trace_id)``
    (UTF-8), read as a big-endian unsigned integer ``n``, satisfy
    ``n / 2**64 < eval_share`` (compared exactly, without float rounding).
    The same trace id lands on the same side in every dataset with the same
    split, whatever the record order or the read path.
    """

    eval_share: float = 0.0
    salt: str = ""

    def __post_init__(self) -> None:
        share = self.eval_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise InvalidDatasetRequest(
                f"eval share must be a number with 0 <= share < 1, got {share!r} "
                "(e.g. 0.1 for a tenth of the traces in eval)"
            )
        if not isinstance(self.salt, str):
            raise InvalidDatasetRequest(f"split salt must be a string, got {self.salt!r}")
        object.__setattr__(self, "eval_share", float(share))
        # n < share * 2**64 is exact: scaling by a power of two is exact in floats,
        # and Python compares int with float exactly.
        object.__setattr__(self, "_threshold", share * 2.0**64)

    def assign(self, trace_id: str) -> SplitName:
        if self.eval_share == 0.0:
            return "train"
        digest = hashlib.sha256((self.salt + trace_id).encode("utf-8")).digest()
        n = int.from_bytes(digest[:8], "big")
        return "eval" if n < self._threshold else "train"  # type: ignore[attr-defined]

    def describe(self) -> str:
        text = f"eval={self.eval_share!r}"
        return text + (f",salt={self.salt}" if self.salt else "")

    def to_avro(self) -> dict:
        return {"eval_share": self.eval_share, "salt": self.salt}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Split:
        return cls(record.get("eval_share", 0.0), record.get("salt", ""))


def parse_split(text: str) -> Split:
    """``eval=0.1`` or ``eval=0.1,salt=S`` → a Split (the salt may not contain a comma)."""
    usage = "give eval=SHARE with 0 <= SHARE < 1, optionally ,salt=TEXT (e.g. eval=0.1,salt=v2)"
    share: float | None = None
    salt = ""
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise InvalidDatasetRequest(f"split {text!r}: {part!r} is not KEY=VALUE; {usage}")
        if key == "eval" and share is None:
            try:
                share = float(value)
            except ValueError:
                raise InvalidDatasetRequest(
                    f"split {text!r}: {value!r} is not a number; {usage}"
                ) from None
            if not math.isfinite(share):
                raise InvalidDatasetRequest(f"split {text!r}: {value!r} is not finite; {usage}")
        elif key == "salt" and not salt:
            salt = value
        else:
            raise InvalidDatasetRequest(f"split {text!r}: unexpected or repeated {key!r}; {usage}")
    if share is None:
        raise InvalidDatasetRequest(f"split {text!r} has no eval share; {usage}")
    if not 0 <= share < 1:
        raise InvalidDatasetRequest(
            f"split {text!r}: the eval share must be at least 0 and below 1; {usage}"
        )
    return Split(share, salt)


# --- the manifest -----------------------------------------------------------


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version by name, e.g. a manifest's parent.

    Version 0 means "the latest ready version" and is only for lookups (the
    CLI's ``NAME`` without ``@VERSION``); a manifest's parent names a real one.
    """

    name: str
    version: int

    def __post_init__(self) -> None:
        check_name(self.name)
        _int("dataset version", self.version, 0)

    @property
    def is_latest(self) -> bool:
        return self.version == 0

    def __str__(self) -> str:
        return f"{self.name}@{'latest' if self.version == 0 else f'v{self.version}'}"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a dataset is: exact offset ranges of one topic, a filter, a split, and the result.

    ``record_count``, ``train_count``, ``eval_count`` and ``content_sha256``
    stay 0/empty until the dataset has been read (the ``ready`` event); use
    ``with_counts``. Construction normalizes (ranges sorted by partition,
    ``created_at`` in UTC milliseconds) and validates, so ``dataclasses.replace``
    keeps every invariant, and ``from_avro(m.to_avro()) == m``.
    """

    name: str
    version: int
    topic: str
    ranges: tuple[OffsetRange, ...]
    filter: TraceFilter = field(default_factory=TraceFilter)
    split: Split = field(default_factory=Split)
    parent: DatasetRef | None = None
    created_at: datetime
    record_count: int = 0
    train_count: int = 0
    eval_count: int = 0
    content_sha256: str = ""
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name)
        _int("dataset version", self.version, 1)
        if not isinstance(self.topic, str) or not self.topic:
            raise InvalidDatasetRequest(f"manifest topic must be a topic name, got {self.topic!r}")
        ranges = tuple(
            sorted((_check_range(OffsetRange(*r)) for r in self.ranges), key=lambda r: r.partition)
        )
        for r in ranges:
            if r.topic != self.topic:
                raise InvalidDatasetRequest(
                    f"range {r} is not in the manifest's topic {self.topic!r}; "
                    "a dataset reads one topic"
                )
        for a, b in zip(ranges, ranges[1:]):
            if a.partition == b.partition:
                raise InvalidDatasetRequest(
                    f"partition {a.partition} has two ranges ({a} and {b}); give one per partition"
                )
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "created_at", _utc_millis("manifest created_at", self.created_at))
        if not isinstance(self.filter, TraceFilter) or not isinstance(self.split, Split):
            raise InvalidDatasetRequest("manifest filter and split must be TraceFilter and Split")
        if self.parent is not None and not isinstance(self.parent, DatasetRef):
            raise InvalidDatasetRequest(
                f"manifest parent must be a DatasetRef, got {self.parent!r}"
            )
        if self.parent is not None and self.parent.is_latest:
            raise InvalidDatasetRequest(
                f"parent {self.parent} of {self.ref} must name a version; resolve 'latest' "
                "to the parent's actual version before building the manifest"
            )
        if self.parent is not None and self.parent.name == self.name and (
            self.parent.version >= self.version
        ):
            raise InvalidDatasetRequest(
                f"{self.ref} cannot have parent {self.parent}; a parent version must be older"
            )
        for what in ("record_count", "train_count", "eval_count"):
            _int(what, getattr(self, what), 0, 2**63 - 1)
        if self.train_count + self.eval_count != self.record_count:
            raise InvalidDatasetRequest(
                f"train_count {self.train_count} + eval_count {self.eval_count} must equal "
                f"record_count {self.record_count}: every record is in exactly one split"
            )
        if self.content_sha256 and not _SHA256_HEX.match(self.content_sha256):
            raise InvalidDatasetRequest(
                f"content_sha256 {self.content_sha256!r} is not 64 lowercase hex digits"
            )
        from schemas.exports import FORMATS  # exports imports this module

        formats = tuple(self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or len(set(formats)) != len(formats):
            raise InvalidDatasetRequest(
                f"manifest formats {list(formats)} must be distinct names from {list(FORMATS)}"
            )
        object.__setattr__(self, "formats", formats)

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(self.name, self.version)

    @property
    def total_offsets(self) -> int:
        """Offsets the ranges span; more than ``record_count`` when the filter drops records."""
        return sum(r.size for r in self.ranges)

    def range_for(self, partition: int) -> OffsetRange | None:
        for r in self.ranges:
            if r.partition == partition:
                return r
        return None

    def with_counts(
        self,
        *,
        train_count: int,
        eval_count: int,
        content_sha256: str,
        formats: Sequence[str] | None = None,
    ) -> Manifest:
        """The manifest once read: counts, hash and (optionally) the formats written."""
        return dataclasses.replace(
            self,
            record_count=train_count + eval_count,
            train_count=train_count,
            eval_count=eval_count,
            content_sha256=content_sha256,
            formats=self.formats if formats is None else tuple(formats),
        )

    def to_avro(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "topic": self.topic,
            "ranges": [
                {"partition": r.partition, "start": r.start, "end": r.end} for r in self.ranges
            ],
            "filter": self.filter.to_avro(),
            "split": self.split.to_avro(),
            "parent": (
                None
                if self.parent is None
                else {"name": self.parent.name, "version": self.parent.version}
            ),
            "created_at": self.created_at,
            "record_count": self.record_count,
            "train_count": self.train_count,
            "eval_count": self.eval_count,
            "content_sha256": self.content_sha256,
            "formats": list(self.formats),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Manifest:
        topic = record["topic"]
        parent = record.get("parent")
        return cls(
            name=record["name"],
            version=record["version"],
            topic=topic,
            ranges=tuple(
                OffsetRange(topic, r["partition"], r["start"], r["end"]) for r in record["ranges"]
            ),
            filter=TraceFilter.from_avro(record["filter"]),
            split=Split.from_avro(record["split"]),
            parent=None if parent is None else DatasetRef(parent["name"], parent["version"]),
            created_at=record["created_at"],
            record_count=record["record_count"],
            train_count=record["train_count"],
            eval_count=record["eval_count"],
            content_sha256=record["content_sha256"],
            formats=tuple(record["formats"]),
        )


@dataclass(frozen=True)
class DatasetEvent:
    """One ``datasets.events`` value: created, ready or failed (with ``error``), and a manifest."""

    event_type: Literal["created", "ready", "failed"]
    manifest: Manifest
    at: datetime
    error: str | None = None

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise InvalidDatasetRequest(
                f"dataset event type {self.event_type!r} is not one of {list(EVENT_TYPES)}"
            )
        if (self.event_type == "failed") != (self.error is not None):
            raise InvalidDatasetRequest(
                "a failed dataset event needs an error message, and only a failed one has one"
            )
        if self.event_type == "ready" and not self.manifest.content_sha256:
            raise InvalidDatasetRequest(
                f"ready event for {self.manifest.ref} has no content_sha256; "
                "use Manifest.with_counts"
            )
        object.__setattr__(self, "at", _utc_millis("event at", self.at))

    @property
    def key(self) -> bytes:
        """The Kafka message key: the dataset name."""
        return self.manifest.name.encode("utf-8")

    def to_avro(self) -> dict:
        return {
            "event_type": self.event_type,
            "manifest": self.manifest.to_avro(),
            "error": self.error,
            "at": self.at,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> DatasetEvent:
        return cls(
            event_type=record["event_type"],
            manifest=Manifest.from_avro(record["manifest"]),
            at=record["at"],
            error=record.get("error"),
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


def _reference_json(value: Any) -> bytes:
    """The definition of the canonical JSON text: what the content hashes of stored manifests were made with."""
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
        return _reference_json(value)


def _plain_float(value: float | None) -> bool:
    """Whether orjson writes ``value`` as ``json.dumps`` does (Python's ``repr``).

    They agree exactly where ``repr`` uses no exponent (0 and 1e-4 <= |x| < 1e16);
    outside that orjson writes ``1e-5`` where ``json`` writes ``1e-05``, and
    ``null`` for ``NaN``.
    """
    return value is None or value == 0.0 or 1e-4 <= abs(value) < 1e16


def float_json(value: float | None) -> bytes:
    """A float (or None) as ``json.dumps`` writes it (``repr``; ``NaN``, ``Infinity``)."""
    return orjson.dumps(value) if _plain_float(value) else _reference_json(value)


class Canonical(NamedTuple):
    """A dataset record in canonical form, serialized once.

    ``data`` is the canonical JSON (``{"created_at":…,"trace_version":…}``),
    the bytes hashed; export lines are cut and spliced from it
    (``schemas.exports``), so no record is serialized twice.
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
        data = _reference_json(c)
    return Canonical(c, data)


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """The exact bytes hashed for a dataset record: sorted keys, no spaces, UTF-8 text."""
    return canonical(record).data


class ContentHasher:
    """``content_sha256``: sha256 over ``canonical_json(record) + b"\\n"`` per record.

    Records must come in strictly increasing (partition, offset) order, the
    order the manifest defines; going backwards or repeating an offset means
    the reader re-delivered or reordered, and the hash would not be stable.
    """

    def __init__(self) -> None:
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


def selector(filter: TraceFilter, split: Split) -> Callable[[Mapping[str, Any]], SplitName | None]:
    """``select`` for one record: the split it is in, or None when ``filter`` drops it."""
    assign = split.assign
    if filter.is_empty:
        return lambda record: assign(record["trace_id"])
    matches = filter.matches
    return lambda record: assign(record["trace_id"]) if matches(record) else None


def select(
    records: Iterable[Mapping[str, Any]],
    filter: TraceFilter,
    split: Split,
    which: Which = "all",
) -> Iterator[tuple[SplitName, Mapping[str, Any]]]:
    """``(split name, record)`` for each record that passes ``filter`` and is in ``which``.

    Both read paths call this (or ``selector``, the same decision for one
    record) on the records of the manifest's ranges, so the dataset is defined
    once. Hash with ``which="all"``.
    """
    if which not in WHICH:
        raise InvalidDatasetRequest(f"which split {which!r} is not one of {list(WHICH)}")
    which_split = selector(filter, split)
    for record in records:
        name = which_split(record)
        if name is not None and (which == "all" or which == name):
            yield name, record
