"""Turn the engine's JSONEachRow output into JSON arrays without decoding it in Python."""

from __future__ import annotations

import json
from typing import Any


def rows_array(rows: bytes) -> bytes:
    """``b'{..}\\n{..}\\n'`` as ``b'[{..},{..}]'`` (a JSON string never holds a raw newline)."""
    rows = rows.rstrip(b"\n")
    return b"[" + rows.replace(b"\n", b",") + b"]" if rows else b"[]"


def row_count(rows: bytes) -> int:
    return rows.count(b"\n")


def last_row(rows: bytes) -> dict[str, Any] | None:
    rows = rows.rstrip(b"\n")
    if not rows:
        return None
    return json.loads(rows[rows.rfind(b"\n") + 1:])


def decode_rows(rows: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rows.splitlines() if line]
