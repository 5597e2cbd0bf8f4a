"""Opaque keyset cursors: where the last page ended, in the table's own order.

A cursor is the (partition, offset) of the last item served, so the next page
starts strictly after it: a page never repeats or skips a row, whatever is
written meanwhile (new rows only ever land at the end of a partition).
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

from api.errors import InvalidRequest

_VERSION = "k1"


class Position(NamedTuple):
    """The key of a row: partition and offset in the table's topic."""

    partition: int
    offset: int


START = Position(0, -1)
"""Before every row (offsets are never negative)."""


def encode_cursor(position: Position) -> str:
    raw = f"{_VERSION}:{position.partition}:{position.offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position:
    """The position a cursor names (``START`` for none).

    Raises:
        InvalidRequest: the cursor was not made by this API.
    """
    if not cursor:
        return START
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, partition, offset = raw.split(":")
        position = Position(int(partition), int(offset))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        position, version = None, None
    if version != _VERSION or position is None or position.partition < 0 or position.offset < -1 \
            or position.partition >= 2**32 or position.offset >= 2**63:
        raise InvalidRequest(
            "cursor is not one this API gave out; pass the next_cursor of the previous page, or none to start",
            [{"field": "query.cursor", "message": "unknown cursor"}],
        )
    return position
