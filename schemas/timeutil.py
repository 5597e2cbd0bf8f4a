"""UTC milliseconds, the one time resolution of tracestream: Avro timestamp-millis, DateTime64(3), Kafka timestamps.

Every conversion between datetimes, epoch milliseconds and their text goes
through here, so each rule is written once: a naive datetime is UTC, times
are truncated (never rounded) to the millisecond, and text ends in ``Z``.
Integer arithmetic throughout: ``timestamp() * 1000`` loses a millisecond
to float rounding for some instants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is UTC:  # what the readers return: nothing to convert
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_millis(value: datetime) -> datetime:
    """``value`` in UTC, truncated to milliseconds (what Avro timestamp-millis keeps)."""
    value = utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_millis(value: datetime) -> int:
    """Milliseconds since the epoch (floored), as Kafka timestamps and ``fromUnixTimestamp64Milli`` take them."""
    return (utc(value) - EPOCH) // _MS


def from_millis(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds (exact: no float on the way)."""
    return EPOCH + ms * _MS


def iso_millis(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC (a naive datetime is UTC)."""
    return utc(value).isoformat(timespec="milliseconds")[:-6] + "Z"


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)
