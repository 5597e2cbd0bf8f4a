"""What each ingest door refuses before anything reaches Kafka: one policy, three doors.

Every door refuses what is not a trace in shape: a JSON line or request body
that is not a trace (``schemas.models``), a record Avro cannot encode. Past
that the doors differ on purpose, and only here:

- ``Door.HTTP`` (``POST /api/traces``) answers while the client waits, so it
  also refuses a trace that breaks a trace rule (``schemas.validation``:
  steps, lengths, indices) and an event larger than
  ``Settings.max_event_bytes``, with a 4xx naming the field, and a batch of
  more than ``MAX_HTTP_BATCH`` traces. Nothing of a refused batch is published.
- ``Door.JSONL`` (``tracestream publish``) and ``Door.SDK``
  (``TraceProducer``) publish a well-shaped trace that breaks a rule: the
  validate stage dead-letters it with the reason, as it would any Avro
  producer's event, so the log keeps what was sent.

The limits themselves are the validator's (``schemas.validation``) and the
settings' event size, never a copy.
"""

from __future__ import annotations

from enum import StrEnum

from deploy.settings import Settings
from schemas.validation import Violation, check_event_size, check_trace

MAX_HTTP_BATCH = 1000
"""Most traces in one ``POST /api/traces/batch``."""


class Door(StrEnum):
    HTTP = "http"
    JSONL = "jsonl"
    SDK = "sdk"


REFUSES_RULE_BREAKERS = frozenset({Door.HTTP})
"""Doors that refuse a trace breaking a trace rule instead of letting validate dead-letter it."""


def rule_refusal(door: Door, record: dict) -> Violation | None:
    """The trace rule ``record`` breaks, if ``door`` refuses such traces; else None."""
    return check_trace(record) if door in REFUSES_RULE_BREAKERS else None


def size_refusal(door: Door, n_bytes: int, settings: Settings) -> Violation | None:
    """Whether ``door`` refuses an event of ``n_bytes``; the limit is the validator's (``max_event_bytes``)."""
    return check_event_size(n_bytes, settings.max_event_bytes) if door in REFUSES_RULE_BREAKERS else None
