"""Opaque keyset cursors: one position per partition of the topic, and the walk's order.

A list is merged from every partition of a topic, so where a page ended is a
vector, as a Kafka consumer's position is: per partition, the last offset
served (``asc``) or the offset below which the walk continues (``desc``).
Each partition is read in offset order from its own position, so a walk never
repeats or skips a row of a partition, whatever lands in the others.

- ``asc``: a partition missing from the vector has served nothing yet (-1), so a
  row written to any partition after the walk began is still ahead of it.
- ``desc``: the first page pins every partition at the top it read (its top
  offset + 1); a partition missing from the vector has nothing left. Rows
  written after the first page are above the pins and never part of the walk.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import NamedTuple

from api.errors import InvalidRequest

_VERSION = "k2"
MAX_PARTITIONS = 1024
"""A cursor names at most this many partitions (a topic's partitions, in practice a handful)."""
_MAX_DIGITS = 20
_MAX_CHARS = 4 * (len("k2:a:") + MAX_PARTITIONS * (_MAX_DIGITS + 1)) // 3 + 4
_OFFSET_END = 2**63


class Order(StrEnum):
    """The direction of a walk: ``asc`` oldest first, ``desc`` newest first."""

    ASC = "asc"
    DESC = "desc"


class Cursor(NamedTuple):
    """Where a walk stands: per partition, the offset it continues from, and its order.

    ``positions[p]`` is, for ``asc``, the last offset served in partition p (-1:
    none yet); for ``desc``, the offset every later row of p is below (0: nothing
    left). Partitions past the end of the tuple hold the default (-1 for asc, 0
    for desc); trailing defaults are dropped, so equal positions are equal
    cursors. ``positions`` is None only at the start of a desc walk, before
    anything is pinned.
    """

    order: Order
    positions: tuple[int, ...] | None

    @classmethod
    def start(cls, order: Order) -> Cursor:
        """Before the first page of a walk in ``order``."""
        return cls(order, () if order is Order.ASC else None)

    @classmethod
    def of(cls, order: Order, positions: dict[int, int] | tuple[int, ...]) -> Cursor:
        """The cursor holding ``positions`` (a mapping partition → offset, or a full tuple)."""
        if isinstance(positions, dict):
            default = _default(order)
            full = [default] * (max(positions, default=-1) + 1)
            for partition, offset in positions.items():
                full[partition] = offset
            positions = tuple(full)
        return cls(order, _trimmed(order, positions))

    @property
    def pinned(self) -> bool:
        """Whether this cursor says where each partition stands (every one but a desc start)."""
        return self.positions is not None

    def position(self, partition: int) -> int | None:
        """The position of ``partition``: the offset it continues from; None for an unpinned desc start."""
        if self.positions is None:
            return None
        return self.positions[partition] if partition < len(self.positions) else _default(self.order)


def _default(order: Order) -> int:
    return -1 if order is Order.ASC else 0


def _trimmed(order: Order, positions: tuple[int, ...]) -> tuple[int, ...]:
    default, end = _default(order), len(positions)
    while end and positions[end - 1] == default:
        end -= 1
    return positions[:end]


def encode_cursor(cursor: Cursor) -> str:
    """The opaque text of ``cursor`` (a pinned one; a desc start is never handed out)."""
    if cursor.positions is None:
        raise ValueError("the start of a desc walk has no cursor; its first page pins one")
    raw = f"{_VERSION}:{cursor.order[0]}:{','.join(map(str, cursor.positions))}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, order: Order = Order.ASC) -> Cursor:
    """The cursor a text names, for a walk in ``order`` (its start for none).

    Raises:
        InvalidRequest: the text was not made by this API, or was made for the other order.
    """
    if not cursor:
        return Cursor.start(order)
    parsed = _parse(cursor)
    if parsed is None:
        raise InvalidRequest(
            "cursor is not one this API gave out; pass the next_cursor of the previous page, or none to start",
            [{"field": "query.cursor", "message": "unknown cursor"}],
        )
    if parsed.order is not order:
        raise InvalidRequest(
            f"this cursor continues an order={parsed.order} walk; pass order={parsed.order} with it, "
            f"or start an order={order} walk without a cursor",
            [{"field": "query.cursor", "message": f"cursor of an order={parsed.order} walk"}],
        )
    return parsed


def _parse(text: str) -> Cursor | None:
    if len(text) > _MAX_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    version, _, rest = raw.partition(":")
    letter, _, numbers = rest.partition(":")
    order = {"a": Order.ASC, "d": Order.DESC}.get(letter)
    if version != _VERSION or order is None or not rest.startswith(f"{letter}:"):
        return None
    fields = numbers.split(",") if numbers else []
    if len(fields) > MAX_PARTITIONS or any(not 1 <= len(f) <= _MAX_DIGITS for f in fields):
        return None
    try:
        positions = tuple(int(f) for f in fields)
    except ValueError:
        return None
    low, high = (-1, _OFFSET_END - 1) if order is Order.ASC else (0, _OFFSET_END)
    if any(not low <= p <= high for p in positions):
        return None
    canonical = _trimmed(order, positions)
    if canonical != positions or encode_cursor(Cursor(order, canonical)) != text.rstrip("="):
        return None  # one walk position, one text: cached pages are found by their cursor
    return Cursor(order, canonical)
