"""Small checks shared by the dataset modules: names, integers, UTC instants.

Avro ints are 32-bit and fastavro would not say, so every number a manifest
carries is checked here once."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from schemas.errors import DatasetIntegrityError, InvalidDatasetRequest
from schemas.timeutil import iso_millis as _iso_millis
from schemas.timeutil import utc_millis

DEFAULT_TOPIC = "traces.valid"
EVENT_TYPES = ("created", "ready", "failed")
WHICH = ("all", "train", "eval")
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
    return utc_millis(value)


def iso_millis(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC: how dataset records and filters render instants."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise DatasetIntegrityError(
            f"created_at {value.isoformat()} has no timezone; dataset readers must return "
            "timezone-aware UTC datetimes (attach timezone.utc to warehouse values)"
        )
    return _iso_millis(value)


def check_name(name: Any) -> str:
    """A dataset name: it is a Kafka key and a folder name, so keep it to a safe alphabet."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidDatasetRequest(
            f"dataset name {name!r} is not allowed; use 1-128 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name
