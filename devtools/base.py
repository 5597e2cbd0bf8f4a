"""What every generated event shares: its time base, trace version and shape.

Kept apart from the content builders so that word problems, arithmetic,
breakage and output can each import it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
"""created_at of event 0; event ``index`` is ``index`` seconds later."""

TRACE_VERSION = 1


@dataclass(frozen=True)
class GeneratedEvent:
    """One event to publish: a ``record`` to encode, or a raw ``payload``.

    ``expected_reason`` is None for a valid trace, else the dead-letter reason.
    ``schema_version`` is set for records (1 or 2) and None for payloads.
    """

    trace_id: str | None
    record: dict | None
    payload: bytes | None
    expected_reason: str | None
    schema_version: int | None
    source_record: dict | None = field(default=None, compare=False, repr=False)
    """For payload breakages: the well-formed trace the bytes were made from (JSONL uses it)."""




def schema_version_of(record: dict) -> int:
    """2 when the record has a ``model`` key, else 1."""
    return 2 if "model" in record else 1


def record_to_json(record: dict) -> dict:
    """The plain JSON shape of a record (``created_at`` as ISO-8601)."""
    out = dict(record)
    created = out.get("created_at")
    if isinstance(created, datetime):
        out["created_at"] = created.isoformat().replace("+00:00", "Z")
    return out
