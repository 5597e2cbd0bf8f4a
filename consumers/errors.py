"""Errors of the subscription SDK: reading offset ranges (dataset replay)."""

from __future__ import annotations

from schemas.errors import TracestreamError


class RangeError(TracestreamError):
    """An offset range cannot be read as asked."""


class RangeExpiredError(RangeError):
    """Offsets of a range are gone from the log: retention (or delete-records) removed them.

    The message names the topic, the partition and the missing offsets
    ``[start, log_start)``. Replay cannot bring them back; the warehouse may
    still hold their rows.
    """


class RangeBeyondEndError(RangeError):
    """A range ends past the partition's high watermark, or names a partition that does not exist."""


class RangeReadStalled(RangeError):
    """The broker stopped returning data before the range was read to its end."""

    retriable = True
