"""The dataset filter language (``source=a,b``, ``steps>=4``…): one ``TraceFilter`` and its parser."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dataset.checks import _float, _int, _utc_millis, iso_millis
from schemas.errors import InvalidDatasetRequest

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
